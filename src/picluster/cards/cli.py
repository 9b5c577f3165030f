"""Host-side subcommands: ``cards``, ``lint``, ``seed`` and ``flash``.

They run on the user's laptop, not on a Pi. None of them prints the cluster
secret or the Wi-Fi password; the summary shows only what is safe to paste
into an issue.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from picluster import secret as cluster_secret
from picluster.cards import bootfs, flash, lint, manifest, seeds
from picluster.cards.device import Device, GiB
from picluster.cards.progress import default_progress
from picluster.cards.writer import xz_size
from picluster.errors import EX_CONFIG

EX_FAIL = 1


def _err(message: str) -> None:
    print(f"picluster: {message}", file=sys.stderr)


def _print_findings(findings: list[lint.Finding], verbose: bool, console: Console) -> None:
    for f in findings:
        if f.severity == lint.Severity.INFO and not verbose:
            continue
        style = {"error": "red", "warning": "yellow", "info": "dim"}[f.severity]
        console.print(f"[{style}]{escape(str(f))}[/]", highlight=False, soft_wrap=True)


def _schema_note() -> str:
    if lint.schema_available():
        return f"cloud-init schema: checked (cloudinit {lint.schema_version()})"
    return (
        "cloud-init schema: not checked (no cloudinit module; 'sudo apt install cloud-init' "
        "adds it), picluster's own rules only"
    )


def _secret(loaded: manifest.Loaded, out: Path, console: Console) -> bytes | None:
    if loaded.manifest.secret == manifest.IMAGE_SECRET:
        console.print(
            "secret: the image's own (the cards carry none, so they join the cards flashed "
            "from the same image, seeded or not)",
            highlight=False,
        )
        return None
    path = loaded.secret_path()
    if path is not None:
        value = cluster_secret.load(path)
        for problem in cluster_secret.check_permissions(path):
            console.print(f"[yellow]warning: {problem}[/]", highlight=False)
        return value
    # "generate": one secret per cluster, kept beside the output so a re-run (or a card
    # added later) reuses it instead of splitting the cluster in two.
    path = out.resolve().parent / f"{loaded.manifest.cluster or 'cluster'}.secret"
    if path.exists():
        cluster_secret.check_private(path, own=True)
        value = cluster_secret.load(path)
        console.print(f'secret: reusing {path} (secret = "generate")', highlight=False)
        return value
    value = cluster_secret.generate()
    cluster_secret.write(path, value)
    console.print(
        f"secret: wrote a new one to {path} (mode 0600). Keep it: cards made later must "
        "get the same one (set secret = that path in the manifest).",
        highlight=False,
    )
    return value


def cmd_cards(args: argparse.Namespace) -> int:
    console = Console()
    loaded = manifest.load(args.manifest)
    secret = _secret(loaded, args.out, console)
    made = seeds.render(loaded, secret)
    findings: list[lint.Finding] = []
    for seed in made:
        directory = args.out / seed.hostname
        seed.write(directory)
        findings += lint.lint_dir(directory)
    table = Table(title=f"cluster {loaded.manifest.title()}: {len(made)} cards in {args.out}")
    for column in ("hostname", "role", "instance-id", "address"):
        table.add_column(column, no_wrap=column == "instance-id")
    for seed in made:
        table.add_row(seed.hostname, str(seed.role), seed.instance_id, seed.address)
    console.print(table)
    stale = sorted(
        p.name for p in lint.seed_dirs(args.out) if p.name not in {s.hostname for s in made}
    )
    if stale:
        console.print(
            f"[yellow]warning: {args.out} also holds {', '.join(stale)}, not in the manifest "
            "(from an earlier run?). Fix: delete them so they are not flashed by mistake[/]",
            highlight=False,
        )
    _print_findings(findings, args.verbose, console)
    errors = sum(f.severity == lint.Severity.ERROR for f in findings)
    warnings = sum(f.severity == lint.Severity.WARNING for f in findings)
    console.print(f"lint: {errors} errors, {warnings} warnings. {_schema_note()}", highlight=False)
    return EX_FAIL if errors else 0


def cmd_lint(args: argparse.Namespace) -> int:
    console = Console()
    dirs: list[Path] = []
    images: list[Path] = []
    for path in args.seed_dir:
        if path.is_dir():
            found = lint.seed_dirs(path)
            if not found:
                _err(f"{path}: holds no user-data/meta-data, nor folders that do")
                return EX_CONFIG
            dirs += found
        elif path.is_file() or path.is_block_device():
            images.append(path)  # an image or a card: its boot partition is read below
        else:
            _err(
                f"{path}: no such folder or image. Fix: give a seed folder (with user-data, "
                "meta-data), a mounted boot partition, or an image file"
            )
            return EX_CONFIG
    findings = [f for d in dirs for f in lint.lint_dir(d)]
    for image in images:
        try:
            findings += lint.lint_image(image)
        except bootfs.BootfsError as exc:
            _err(f"{exc} (lint also takes a seed folder or a mounted boot partition)")
            return EX_CONFIG
    _print_findings(findings, args.verbose, console)
    errors = sum(f.severity == lint.Severity.ERROR for f in findings)
    warnings = sum(f.severity == lint.Severity.WARNING for f in findings)
    console.print(
        f"{len(dirs) + len(images)} seed(s): {errors} errors, {warnings} warnings. "
        f"{_schema_note()}",
        highlight=False,
    )
    return EX_FAIL if lint.has_errors(findings, args.strict) else 0


def _lint_card(card: Path, console: Console) -> bool:
    findings = lint.lint_dir(card)
    _print_findings(findings, False, console)
    if lint.has_errors(findings):
        _err(f"{card}: the seed has errors (above). Fix them, then run again")
        return False
    return True


def cmd_seed(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    bootfs.require_image(args.image)
    bootfs.seed_files(args.card)
    if not _lint_card(args.card, console):
        return EX_CONFIG
    with default_progress(console) as bar:
        task = bar.add_task(f"copy {args.image.name}", total=xz_size(args.image))
        part = bootfs.seed_image(args.image, args.card, args.output, lambda n: bar.advance(task, n))
    console.print(
        f"{args.output}: seed from {args.card} written to partition 1 "
        f"(bootfs at byte {part.start}); mode 0600 because it holds the cluster secret",
        highlight=False,
    )
    return 0


def _confirm(assume_yes: bool, console: Console) -> Callable[[Device, Path], bool]:
    def confirm(device: Device, image: Path) -> bool:
        console.print(
            f"About to overwrite [bold]{device.path}[/] ({device.description}, "
            f"{device.size / GiB:.1f} GiB) with {image.name}. Everything on it is lost.",
            highlight=False,
        )
        if assume_yes:
            return True
        if not sys.stdin.isatty():
            _err("not a terminal, so cannot ask. Fix: add --yes if this is the right device")
            return False
        answer = input(f"Type the device name ({device.path.name}) to continue: ")
        return answer.strip() in (device.path.name, str(device.path))

    return confirm


def cmd_flash(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.card is not None:
        bootfs.seed_files(args.card)
        if not _lint_card(args.card, console):
            return EX_CONFIG
    result = flash.flash(
        args.image,
        args.device,
        args.card,
        force=args.force,
        verify_after=not args.no_verify,
        confirm=_confirm(args.yes, console),
        progress_factory=lambda: default_progress(console),
    )
    how = f"bmap {result.bmap.name}" if result.bmap else "whole image"
    check = "verified by read-back" if result.verified else "NOT verified (--no-verify)"
    console.print(
        f"{result.device}: wrote {result.written / 2**20:.1f} MiB ({how}), {check}", highlight=False
    )
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if result.boot and args.card:
        console.print(
            f"{result.device}: seed from {args.card} written to the boot partition "
            f"(byte {result.boot.start}). Safe to remove the card after 'sync'.",
            highlight=False,
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cards",
        help="turn a cluster manifest into one NoCloud seed folder per card",
        description="Write user-data/meta-data/network-config for every card of the "
        "manifest into OUT/<hostname>/, lint them, and print a summary.",
    )
    p.add_argument(
        "manifest", type=Path, help="cluster manifest (see examples/cluster-manifest.toml)"
    )
    p.add_argument(
        "--out", "-o", type=Path, default=Path("cards"), help="output folder (default: cards)"
    )
    p.add_argument("--verbose", "-v", action="store_true", help="also show info findings (roles)")
    p.set_defaults(func=cmd_cards)

    p = subparsers.add_parser(
        "lint",
        help="check NoCloud seed folders before flashing",
        description="Check seed folders (or a folder of seed folders, or a card's mounted "
        "boot partition, with its cmdline.txt) with picluster's rules and, when the cloudinit "
        "module is installed, cloud-init's schema. An image file (.img) or a card device is "
        "read without mounting (mtools).",
    )
    p.add_argument(
        "seed_dir", type=Path, nargs="+", help="seed folder(s), boot partition(s) or image(s)"
    )
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.add_argument("--verbose", "-v", action="store_true", help="also show info findings")
    p.set_defaults(func=cmd_lint)

    p = subparsers.add_parser(
        "seed",
        help="copy an image with one card's seed in its boot partition (no mounting)",
        description="Copy IMAGE (.img or .img.xz) to OUTPUT and write the card's seed "
        "files into partition 1 (FAT bootfs) with mtools. Atomic: OUTPUT appears only "
        "when complete.",
    )
    p.add_argument("image", type=Path, help="deploy/<name>.img or .img.xz")
    p.add_argument("--card", type=Path, required=True, help="seed folder, e.g. cards/engine-1")
    p.add_argument("--output", "-o", type=Path, required=True, help="card image to write")
    p.set_defaults(func=cmd_seed)

    p = subparsers.add_parser(
        "flash",
        help="write an image to an SD card, verify it, and add one card's seed",
        description="Write IMAGE to DEVICE (bmap-aware when IMAGE's .bmap exists, .xz "
        "streamed), verify by reading back, then write the card's seed into the boot "
        "partition. Refuses mounted devices and the system disk; devices over 256 GiB "
        "need --force.",
    )
    p.add_argument("image", type=Path, help="deploy/<name>.img.xz (or .img)")
    p.add_argument("device", type=Path, help="the whole SD card, e.g. /dev/sdb or /dev/mmcblk0")
    p.add_argument("--card", type=Path, help="seed folder, e.g. cards/engine-1")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true", help="allow devices larger than 256 GiB")
    p.add_argument("--no-verify", action="store_true", help="skip the read-back verification")
    p.set_defaults(func=cmd_flash)
