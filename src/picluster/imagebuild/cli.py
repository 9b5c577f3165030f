"""``picluster build`` (what ``./build.sh`` runs by default): build the cluster image;
``picluster lock``: re-resolve its venv's packages. ``boot`` is in ``picluster.vm.cli``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from picluster import __version__
from picluster import secret as secret_mod
from picluster.errors import PiclusterError
from picluster.imagebuild import cache as cache_mod
from picluster.imagebuild import (
    debian_base,
    deploy,
    image,
    native,
    preflight,
    raspios,
    stage,
    wheelhouse,
)
from picluster.imagebuild import (
    settings as settings_mod,
)
from picluster.imagebuild.steps import StepLog

REPO = Path(__file__).resolve().parents[3]
STAGE_DIR = REPO / "stage-cluster"
STAGE_FILES = STAGE_DIR / "00-venv" / "files"
REQUIREMENTS = STAGE_FILES / "requirements.txt"
REQUIREMENTS_IN = STAGE_DIR / "00-venv" / "requirements.in"
INSTALLER = STAGE_FILES / "installer.txt"
INTERRUPTED = "build.sh: interrupted; mounts and partial files were cleaned up"
"""What Ctrl-C during ``build`` or ``lock`` prints (``picluster.cli.main`` reads it)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    b = subparsers.add_parser("build", help="build the image (the default command)")
    _build_args(b)
    lock = subparsers.add_parser(
        "lock", help="re-resolve stage-cluster/00-venv/files/requirements.txt"
    )
    lock.set_defaults(func=cmd_lock, interrupted=INTERRUPTED)


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", choices=("auto", "raspios", "debian"), help="override PICLUSTER_BASE")
    p.add_argument(
        "-c", "--config", type=Path, help="extra pi-gen config fragment on top of ./config"
    )
    p.add_argument("--work-dir", type=Path, default=REPO / "work", help="scratch (default ./work)")
    p.add_argument(
        "--deploy-dir", type=Path, default=REPO / "deploy", help="outputs (default ./deploy)"
    )
    p.add_argument(
        "--no-compress", action="store_true", help="skip .img.xz (tests use the raw image)"
    )
    p.add_argument(
        "--no-install-deps",
        action="store_true",
        help="do not apt-get install missing host packages (only say which)",
    )
    p.set_defaults(func=cmd_build, interrupted=INTERRUPTED)


def cmd_lock(args: argparse.Namespace) -> int:
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "picluster-lock"
    count = wheelhouse.lock(REQUIREMENTS_IN, REQUIREMENTS, scratch)
    print(f"{REQUIREMENTS}: {count} wheels pinned by hash")
    return 0


def _secret_file(settings: settings_mod.Settings, deploy_dir: Path, log: StepLog) -> Path:
    """The build's secret: the configured file, else a fresh one in deploy/ (0600)."""
    if settings.secret_file:
        path = Path(settings.secret_file)
        secret = secret_mod.load(path)
        log.note(f"cluster secret: {path} (fingerprint {secret_mod.fingerprint(secret)})")
        return path
    path = deploy_dir / f"{settings.img_name}.secret"
    if path.exists():
        secret = secret_mod.load(path)
        log.note(f"cluster secret: reusing {path} (cards made for it keep working)")
    else:
        secret = secret_mod.generate()
        secret_mod.write(path, secret)
        log.note(f"cluster secret: new, written to {path} (mode 0600)")
    log.note(f"secret fingerprint {secret_mod.fingerprint(secret)}")
    return path


def cmd_build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        settings = settings_mod.load(REPO / "config", args.config)
    except settings_mod.SettingsError as exc:
        print(f"build.sh: {exc}", file=sys.stderr)
        return 2
    if args.base:
        settings = settings.model_copy(update={"base": args.base})
    work, deploy_dir = args.work_dir.resolve(), args.deploy_dir.resolve()
    if not args.no_install_deps:
        preflight.set_up_host(settings.base, lambda line: print(f"build.sh: {line}"))
    problems = preflight.check(REPO, work, base=settings.base)
    if problems:
        print("build.sh: cannot build yet:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    # The root file system and the raw image in it hold the cluster secret.
    work.chmod(0o700)
    deploy_dir.mkdir(parents=True, exist_ok=True)
    log = StepLog(work / "build.log")
    log.write(f"\n##### build started {datetime.now(UTC).isoformat()} #####")
    cache = cache_mod.Cache(Path(settings.cache_dir))
    try:
        base = settings.base
        if base == "auto":
            ok, why = raspios.reachable(settings)
            base = "raspios" if ok else "debian"
            if not ok:
                log.warn(f"base: DEBIAN (not Raspberry Pi OS): {why}")
            for problem in preflight.pigen_problems() if ok else []:
                raise settings_mod.SettingsError(f"cannot build on Raspberry Pi OS: {problem}")
        log.note(f"base: {base}; log: {log.path}")
        result = _build(settings, base, work, deploy_dir, cache, log, args)
    except (PiclusterError, OSError) as exc:
        log.console.print(f"[bold red]build failed[/] in step: {log.current or '?'}: {exc}")
        log.console.print(f"[dim]last lines of {log.path}:[/]\n{log.tail(25)}", markup=False)
        return 1
    finally:
        log.close()
    total = time.monotonic() - started
    log.console.print(
        f"[bold green]built[/] {settings.img_name} on the [bold]{base}[/] base "
        f"in {total / 60:.1f} min"
    )
    for name in result:
        log.console.print(f"  {name}")
    return 0


def _build(
    settings: settings_mod.Settings,
    base: str,
    work: Path,
    deploy_dir: Path,
    cache: cache_mod.Cache,
    log: StepLog,
    args: argparse.Namespace,
) -> list[Path]:
    sizes: dict[str, int] = {}
    with log.step("cluster secret"):
        secret_file = _secret_file(settings, deploy_dir, log)
    with log.step("picluster wheel (into stage-cluster/00-venv/files)"):
        own = wheelhouse.own_wheel(REPO, STAGE_FILES, log.run)
    with log.step("wheelhouse (aarch64, hashed)"):
        wheels = wheelhouse.ensure(REQUIREMENTS, INSTALLER, own, cache.root, work, log.run)
    with log.step("native Python twin"):
        native_root = native.ensure(cache, log, settings.release, settings.debian_mirror)
    stage_env = {
        **settings_mod.shell_exports(settings),
        "PICLUSTER_PYTHON": sys.executable,
        "PICLUSTER_WHEELS": str(wheels),
        "PICLUSTER_NATIVE": str(native_root),
        "PICLUSTER_SECRET_FILE": str(secret_file.resolve()),
        "BASE_DIR": str(REPO),
        "IMG_NAME": settings.img_name,
        "DEPLOY_DIR": str(deploy_dir),
        "PYTHONPATH": str(REPO / "src"),
    }
    raw = work / f"{settings.img_name}.img"
    pigen_commit = ""
    if base == "raspios":
        with log.step("pi-gen stage0-2 + stage-cluster"):
            raw, pigen_commit, rootfs = raspios.build(settings, STAGE_DIR, work, stage_env, log)
        sizes["raw"] = raw.stat().st_size
    else:
        with log.step("debian base (mmdebstrap; reused when its inputs match)"):
            base_root = debian_base.ensure(settings, cache, native_root, log)
        rootfs = work / "stage-cluster" / "rootfs"
        with log.step("copy base"):
            debian_base.copy_to(base_root, rootfs, log)
        with log.step("stage-cluster (pi-gen contract)"):
            ran = stage.StageRunner(log, stage_env).run(STAGE_DIR, work, rootfs)
            log.write("ran: " + ", ".join(ran))
        with log.step("finalise root file system"):
            image.finalise(rootfs)
        with log.step("assemble image"):
            sizes["rootfs_used"] = image.du_bytes(rootfs)
            layout = image.assemble(rootfs, work, raw, settings.image_extra_mb, log)
            sizes["raw"] = layout.total
    outputs: list[Path] = []
    with log.step("block map"):
        outputs.append(deploy.block_map(raw, deploy_dir, log))
    if settings.compression == "xz" and not args.no_compress:
        with log.step(f"xz -{settings.compression_level}"):
            xz = deploy.compress(raw, deploy_dir, settings.compression_level, log)
            sizes["xz"] = xz.stat().st_size
            outputs.insert(0, xz)
    with log.step("checksums + manifest"):
        sums, digests = deploy.checksums(deploy_dir, settings.img_name, [*outputs, raw])
        outputs.append(sums)
        xz_out = deploy_dir / f"{raw.name}.xz"
        if xz_out in outputs:
            outputs.append(
                deploy.imager_manifest(
                    deploy_dir, settings.img_name, xz_out, raw, digests[raw],
                    f"picluster image ({base} base, {settings.release}, arm64)",
                )
            )  # fmt: skip
        manifest = deploy.manifest(
            deploy_dir,
            settings.img_name,
            {
                "name": settings.img_name,
                "base": base,
                "release": settings.release,
                "pi_gen_commit": pigen_commit or None,
                "picluster_version": __version__,
                "venv": deploy.venv_versions(rootfs) if rootfs else {},
                "sizes_bytes": sizes,
                "compression_level": settings.compression_level,
                "raw_image": str(raw),
                "step_seconds": log.timings,
                "built": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        outputs.append(manifest)
    outputs.append(secret_file)
    return outputs
