"""The image's venv built inside the target, with nothing but its own python3.

The self-contained path of ``stage-cluster/00-venv/01-run.sh``: under stock
pi-gen (``build.sh`` or ``build-docker.sh``) the build host has no picluster and
maybe no python3, so the stage copies its ``files/`` into the chroot and runs,
inside it::

    PYTHONPATH=<scratch>/picluster-<v>-py3-none-any.whl \\
        python3 -m picluster.imagebuild.chroot_venv <scratch>

This module and what it imports use the standard library only (it runs from
the wheel, before any dependency exists). It fetches every wheel ``requirements.txt`` and
``installer.txt`` pin from PyPI, choosing the file by its pinned SHA-256 and
checking it, creates ``/opt/picluster`` with ``python3.13 -m venv
--without-pip``, and installs the wheels plus picluster's own with the same
``install_wheels`` the native fast path runs (``venv.py``): the same files
in the same places, only byte-compiled under emulation instead of natively.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from picluster.imagebuild.wheelhouse import sha256

VENV = "/opt/picluster"
PYTHON = "python3.13"
INDEX = "https://pypi.org/simple/{name}/"
"""PyPI's simple index in its JSON form (PEP 691), what pip itself reads."""
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)$")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


class FetchError(Exception):
    pass


def pins(path: Path) -> list[tuple[str, str, set[str]]]:
    """(name, version, allowed sha256 digests) of a hashed lock file."""
    out: list[tuple[str, str, set[str]]] = []
    logical = path.read_text().replace("\\\n", " ")
    for n, line in enumerate(logical.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, *rest = line.split()
        match = _PIN.match(head)
        digests = set(_HASH.findall(" ".join(rest)))
        if not match or not digests:
            raise FetchError(
                f"{path}: entry {n} {head!r} is not 'name==version --hash=sha256:...'. "
                "Fix: regenerate it with `./build.sh lock` in a picluster checkout"
            )
        out.append((match[1], match[2], digests))
    return out


def fetch(name: str, version: str, digests: set[str], dest: Path) -> Path:
    """The wheel of ``name==version`` whose SHA-256 is pinned, downloaded and checked."""
    url = INDEX.format(name=name)
    accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    request = urllib.request.Request(url, headers=accept)  # noqa: S310 - fixed https URL
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310 - fixed https URL
            project = json.load(resp)
    except OSError as exc:
        raise FetchError(
            f"{name}=={version}: {url}: {exc}. Fix: the chroot needs DNS and https to "
            "pypi.org (or build with picluster's ./build.sh, which downloads on the host)"
        ) from None
    files = [f for f in project.get("files", []) if f.get("hashes", {}).get("sha256") in digests]
    if not files:
        raise FetchError(f"{name}=={version}: no file on PyPI has the pinned sha256")
    target = dest / files[0]["filename"]
    if not (target.exists() and sha256(target) in digests):
        partial = target.with_name(target.name + ".partial")
        url = files[0]["url"]
        with urllib.request.urlopen(url, timeout=300) as resp, partial.open("wb") as fh:  # noqa: S310
            shutil.copyfileobj(resp, fh)
        if sha256(partial) not in digests:
            partial.unlink()
            raise FetchError(f"{target.name}: sha256 does not match the pin")
        partial.replace(target)
    return target


def fetch_all(lock: Path, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [pool.submit(fetch, *pin, dest) for pin in pins(lock)]
        return sorted(job.result() for job in jobs)


def build(scratch: Path, venv: str = VENV) -> int:
    """Create ``venv`` from the stage files copied to ``scratch``; returns the wheel count."""
    own = sorted(scratch.glob("picluster-*.whl"))
    if len(own) != 1:
        raise FetchError(f"{scratch}: expected one picluster-*.whl, found {len(own)}")
    wheels = fetch_all(scratch / "requirements.txt", scratch / "wheels")
    installer = fetch_all(scratch / "installer.txt", scratch / "tools")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", venv], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*installer, *own]))}
    subprocess.run(
        [f"{venv}/bin/python", "-m", "picluster.imagebuild.install_wheels", *map(str, wheels),
         str(own[0])],
        check=True, env=env,
    )  # fmt: skip
    return len(wheels) + 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m picluster.imagebuild.chroot_venv SCRATCH_DIR", file=sys.stderr)
        return 2
    try:
        count = build(Path(args[0]))
    except (FetchError, OSError, subprocess.CalledProcessError) as exc:
        print(f"stage-cluster venv: {exc}", file=sys.stderr)
        return 1
    print(f"stage-cluster venv: {count} wheels installed into {VENV} (compiled in the chroot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
