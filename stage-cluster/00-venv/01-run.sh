#!/bin/bash -e
# The venv at /opt/picluster from the hashed aarch64 wheelhouse, installed and
# byte-compiled by a native twin of the target's Python (nothing emulated).
# ./build.sh exports PICLUSTER_PYTHON, PICLUSTER_WHEELS and PICLUSTER_NATIVE.
set -euo pipefail
: "${PICLUSTER_PYTHON:?run this stage through ./build.sh, which prepares the wheelhouse}"
"${PICLUSTER_PYTHON}" -m picluster.imagebuild.venv \
    --rootfs "${ROOTFS_DIR}" \
    --wheels "${PICLUSTER_WHEELS:?}" \
    --native "${PICLUSTER_NATIVE:?}" \
    --log "${STAGE_WORK_DIR}/venv.log"
