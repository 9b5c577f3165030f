#!/bin/bash -e
# Units, /etc/picluster (cluster.toml + the build's secret, 0600) and the
# example card seeds on /boot/firmware, from ../../files and ./config.
set -euo pipefail
: "${PICLUSTER_PYTHON:?run this stage through ./build.sh}"
"${PICLUSTER_PYTHON}" -m picluster.imagebuild.overlay \
    --rootfs "${ROOTFS_DIR}" \
    --files "$(cd ../../files && pwd)"
