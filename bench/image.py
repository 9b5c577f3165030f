"""Image benchmarks (issue 3): build time per step, cold and warm; image sizes.

    sudo .venv/bin/python -m bench.image steps            # from deploy/*.manifest.json
    sudo .venv/bin/python -m bench.image warm             # rebuild now (caches warm), then steps
    sudo .venv/bin/python -m bench.image sizes            # raw, xz, and what the stage adds (xz)
    sudo .venv/bin/python -m bench.image levels 1 3 6     # xz time and size per level, one run

"What the stage adds" compresses the stage's files (the venv, units, config)
out of the stage's root file system with the image's xz level: it is the
share of the .img.xz that stage-cluster is responsible for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_PATHS = ["opt/picluster", "etc/picluster", "usr/lib/systemd/system/picluster-agent.service",
               "usr/lib/systemd/system/picluster-jupyter.service"]  # fmt: skip
MB = 1e6


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


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.image",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, fn in (("steps", steps), ("warm", warm), ("sizes", sizes), ("levels", levels)):
        p = sub.add_parser(name)
        p.set_defaults(func=fn)
        if name == "sizes":
            p.add_argument("--level", type=int, help="xz level (default: the build's)")
        if name == "levels":
            p.add_argument("level", type=int, nargs="+", choices=range(10), help="xz levels")
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
