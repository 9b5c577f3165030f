# shellcheck shell=bash
# The helpers pi-gen exports to stage scripts (log, on_chroot, copy_previous),
# for the debian base's stage runner (picluster.imagebuild.stage). Same names,
# same meaning; the runner mounts /proc, /sys, /dev, /run and /tmp in the
# root file system for the whole stage, so on_chroot only enters it.

log() {
    printf '[%s] %s\n' "$(date +%T)" "$*"
}

on_chroot() {
    if ! mountpoint -q "${ROOTFS_DIR}/proc"; then
        echo "on_chroot: ${ROOTFS_DIR}/proc is not mounted (run stages through the runner)" >&2
        return 1
    fi
    chroot "${ROOTFS_DIR}/" /bin/bash -e "$@"
}

copy_previous() {
    if [ ! -d "${PREV_ROOTFS_DIR:-}" ]; then
        echo "copy_previous: previous stage root '${PREV_ROOTFS_DIR:-}' missing" >&2
        return 1
    fi
    mkdir -p "${ROOTFS_DIR}"
    rsync -aHAXx --exclude /var/cache/apt/archives "${PREV_ROOTFS_DIR}/" "${ROOTFS_DIR}/"
}

export -f log on_chroot copy_previous
