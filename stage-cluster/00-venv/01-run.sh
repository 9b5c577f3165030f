#!/bin/bash -e
# The venv at /opt/picluster: the wheels files/requirements.txt pins by hash
# (aarch64, CPython 3.13) plus picluster's own wheel, files/picluster-*.whl,
# which ./build.sh builds from its checkout (by hand, in a picluster checkout:
# `pip wheel --no-deps -w stage-cluster/00-venv/files .`).
#
# ./build.sh's fast path (PICLUSTER_NATIVE set): a native twin of the target's
# Python installs and byte-compiles them (picluster.imagebuild.venv). Stock
# pi-gen: the target's own python3 does the same inside the chroot
# (picluster.imagebuild.chroot_venv, run from the wheel): slower, same files.
set -euo pipefail
own=(files/picluster-*.whl)
if [ "${#own[@]}" -ne 1 ] || [ ! -f "${own[0]}" ]; then
    echo "stage-cluster/00-venv/files: needs exactly one picluster-*.whl (found: ${own[*]})." \
        "Fix: in a picluster checkout, rm -f stage-cluster/00-venv/files/*.whl &&" \
        "pip wheel --no-deps -w stage-cluster/00-venv/files ." >&2
    exit 1
fi
if [ -n "${PICLUSTER_NATIVE:-}" ]; then
    "${PICLUSTER_PYTHON:?PICLUSTER_NATIVE is set without PICLUSTER_PYTHON}" \
        -m picluster.imagebuild.venv \
        --rootfs "${ROOTFS_DIR}" \
        --wheels "${PICLUSTER_WHEELS:?PICLUSTER_NATIVE is set without PICLUSTER_WHEELS}" \
        --native "${PICLUSTER_NATIVE}" \
        --log "${STAGE_WORK_DIR}/venv.log"
    exit 0
fi
scratch=/var/tmp/picluster-stage
rm -rf "${ROOTFS_DIR:?}${scratch}"
install -d -m 700 "${ROOTFS_DIR}${scratch}"
install -m 644 files/requirements.txt files/installer.txt "${own[0]}" "${ROOTFS_DIR}${scratch}/"
on_chroot << EOF
PYTHONPATH=${scratch}/${own[0]##*/} python3 -m picluster.imagebuild.chroot_venv ${scratch}
EOF
rm -rf "${ROOTFS_DIR:?}${scratch}"
