"""A stock ipyparallel client on the image's Python (3.13), for the foreign-bytecode test.

The image tier's native twin (``picluster.imagebuild.native``: an amd64 Debian
trixie chroot with the image's CPython) runs the client; it needs ipyparallel
and its dependencies as wheels for that Python and the build host's
architecture, at the versions the image pins. Downloading them is CI setup, not
a test (tests use no network beyond loopback and their namespaces):

    .venv/bin/python -m tests.image.foreign_client download

fills ``<cache_dir>/client-313-wheels-<key>`` (the key hashes the pins and the
target, so a changed pin downloads anew; the entry appears only when complete).
The test then installs them offline into a venv inside a throw-away overlay of
the twin: the build's cached twin is never written to.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from picluster.imagebuild import cache as cache_mod
from picluster.imagebuild import native, settings, wheelhouse

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "stage-cluster/00-venv/files/requirements.txt"
ROOT_REQUIREMENT = "ipyparallel"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def pins() -> list[str]:
    """``name==version`` of every package the image pins (hashes are aarch64's: dropped)."""
    found = [m.group(0) for line in REQUIREMENTS.read_text().splitlines()
             if (m := _PIN.match(line))]  # fmt: skip
    if not any(p.lower().startswith(ROOT_REQUIREMENT + "==") for p in found):
        raise SystemExit(f"{REQUIREMENTS}: no {ROOT_REQUIREMENT}== pin")
    return found


def platforms() -> tuple[str, ...]:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(native.host_arch(), native.host_arch())
    return tuple(p.replace("aarch64", machine) for p in wheelhouse.PLATFORMS)


def target_args() -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp"]
    args += ["--python-version", wheelhouse.PYTHON_VERSION]
    for abi in (wheelhouse.ABI, "abi3", "none"):
        args += ["--abi", abi]
    for platform in platforms():
        args += ["--platform", platform]
    return args


def entry() -> str:
    version = wheelhouse.PYTHON_VERSION.replace(".", "")
    return cache_mod.key(
        f"client-{version}-wheels",
        {"root": ROOT_REQUIREMENT, "pins": pins(), "target": target_args()},
    )


def build_settings() -> settings.Settings:
    """The build's settings (cache dir, release, mirror), as ``./build.sh`` reads them.

    Test switches such as ``PICLUSTER_TEST_REUSE_IMAGE`` share the settings' prefix
    but are not settings: they are hidden from ``settings.load`` while it reads."""
    hidden = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("PICLUSTER_TEST_")}
    try:
        return settings.load(REPO / "config")
    finally:
        os.environ.update(hidden)


def cache() -> cache_mod.Cache:
    return cache_mod.Cache(Path(build_settings().cache_dir))


def wheel_dir() -> Path | None:
    """The downloaded wheels for the current pins, or None if nobody downloaded them."""
    return cache().get(entry())


def download() -> Path:
    c = cache()
    found = c.get(entry())
    if found:
        return found
    with c.filling(entry()) as scratch, tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(pins()) + "\n")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-cache-dir"]
        cmd += ["--dest", str(scratch), *target_args(), "--constraint", str(constraints)]
        subprocess.run([*cmd, ROOT_REQUIREMENT], check=True)
    return c.path(entry())


if __name__ == "__main__":
    if sys.argv[1:] != ["download"]:
        sys.exit("usage: python -m tests.image.foreign_client download")
    print(download())
