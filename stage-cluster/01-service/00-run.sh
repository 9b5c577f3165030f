#!/bin/bash -e
# The units and the example card seeds from files/, then what picluster itself
# writes inside the image (picluster.imagebuild.overlay, run by the venv's
# python): /etc/picluster/cluster.toml from the PICLUSTER_* settings the config
# exports, cloud-init's default user (FIRST_USER_NAME), sshd keys only, the
# FAT partition root-only, and the cluster secret (0600):
#   PICLUSTER_SECRET_FILE if set, else ${DEPLOY_DIR}/${IMG_NAME}.secret when an
#   earlier build left one (cards made for it keep working), else a new secret,
#   saved there (0600) for `picluster cards`.
set -euo pipefail
install -m 644 files/systemd/*.service "${ROOTFS_DIR}/usr/lib/systemd/system/"
install -d "${ROOTFS_DIR}/boot/firmware"
install -m 644 files/cloud-init/user-data files/cloud-init/meta-data \
    files/cloud-init/network-config "${ROOTFS_DIR}/boot/firmware/"

secret="${PICLUSTER_SECRET_FILE:-${DEPLOY_DIR}/${IMG_NAME}.secret}"
image_secret="${ROOTFS_DIR}/etc/picluster/secret"
rm -f "${image_secret}"
if [ -f "${secret}" ]; then
    install -D -m 600 -o root -g root "${secret}" "${image_secret}"
elif [ -n "${PICLUSTER_SECRET_FILE:-}" ]; then
    echo "stage-cluster: PICLUSTER_SECRET_FILE=${PICLUSTER_SECRET_FILE}: no such file." \
        "Fix: name an existing secret (picluster secret new FILE) or unset it" >&2
    exit 1
fi
on_chroot << 'EOF'
/opt/picluster/bin/python -m picluster.imagebuild.overlay --rootfs /
EOF
if [ ! -f "${secret}" ]; then
    install -D -m 600 -o root -g root "${image_secret}" "${secret}"
    log "stage-cluster: new cluster secret saved to ${secret} (mode 0600, for picluster cards)"
fi
