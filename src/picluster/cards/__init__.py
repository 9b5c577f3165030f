"""The host-side card tool: cluster manifest -> per-card NoCloud seeds -> images and SD cards.

``manifest`` reads and validates the cluster manifest, ``seeds`` renders one
card's ``user-data``/``meta-data``/``network-config``, ``lint`` checks seeds
(ours or anyone's), ``bootfs`` writes a seed into an image's FAT partition with
mtools, ``flash`` writes an image to a block device, and ``cli`` wires the four
subcommands ``cards``, ``lint``, ``seed`` and ``flash``.
"""
