"""Trying the image without a Pi: the same image boots as a QEMU cluster.

lan (a network namespace with a bridge and one tap per VM), disks (per-VM
card images seeded with ``picluster seed``), vm (one qemu-system-aarch64 with
the kernel and initrd taken from the image), forward (the controller's
JupyterLab on 127.0.0.1 of the host), cluster (the whole thing, phase by
phase) and cli (``./build.sh boot``).
"""
