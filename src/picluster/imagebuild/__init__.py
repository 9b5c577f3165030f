"""Building the cluster image: ``sudo ./build.sh`` (``picluster build``) lands in ``cli``.

One module per job: settings (the pi-gen ``config``), preflight, steps
(progress, log, timings), cache, wheelhouse, native (an amd64 twin of the
target's Python for byte-compiling), debian_base (mmdebstrap), stage (the
pi-gen sub-stage contract), venv, image (partitions), deploy (xz, bmap,
sha256, manifest) and raspios (real pi-gen).
"""
