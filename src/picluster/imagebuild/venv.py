"""The image's venv at /opt/picluster, built at native speed.

The stage calls ``python -m picluster.imagebuild.venv --rootfs DIR --wheels DIR
--native DIR``: the native twin (native.py) sees the target's /opt/picluster
at the same path, creates the venv there (its ``python3.13`` symlink points
at /usr/bin/python3.13, which the target has too), and installs the hashed
wheelhouse plus picluster's own wheel with ``installer``. Byte-compiling
happens here, natively; nothing is compiled under emulation and nothing at
first boot.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from picluster.imagebuild import native
from picluster.imagebuild.steps import BuildError, StepLog

VENV = "/opt/picluster"
INSTALLER_SCRIPT = Path(__file__).with_name("install_wheels.py")


def install(rootfs: Path, wheels: Path, native_root: Path, log: StepLog) -> int:
    target_venv = rootfs / VENV.lstrip("/")
    if target_venv.exists():
        shutil.rmtree(target_venv)
    target_venv.mkdir(parents=True)
    installer = sorted(wheels.glob("tools/installer-*.whl"))
    packages = sorted(wheels.glob("*.whl"))
    if not installer or not packages:
        raise BuildError(f"{wheels}: wheelhouse incomplete (installer or wheels missing)")
    tools = Path("/picluster-tools")
    binds = {VENV: target_venv, "/wheels": wheels, str(tools): INSTALLER_SCRIPT.parent}
    with native.session(native_root, binds):
        native.run(native_root, ["python3.13", "-m", "venv", "--without-pip", VENV], log)
        native.run(
            native_root,
            [
                "env",
                f"PYTHONPATH=/wheels/tools/{installer[-1].name}",
                f"{VENV}/bin/python",
                str(tools / INSTALLER_SCRIPT.name),
                *(f"/wheels/{w.name}" for w in packages),
            ],
            log,
        )
    # pyvenv.cfg names the twin's interpreter; the target's is the same path.
    return len(packages)


def compile_tree(rootfs: Path, dirs: list[str], native_root: Path, log: StepLog) -> None:
    """Byte-compile Debian's Python files in ``rootfs`` natively (see debian_base)."""
    existing = [d for d in dirs if (rootfs / d.lstrip("/")).is_dir()]
    with native.session(native_root, {"/target": rootfs}):
        native.run(
            native_root,
            ["python3.13", "-m", "compileall", "-q", "-j", "0", "-s", "/target", "-p", "/"]
            + [f"/target{d}" for d in existing],
            log,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m picluster.imagebuild.venv", description=__doc__
    )
    parser.add_argument("--rootfs", type=Path, required=True)
    parser.add_argument("--wheels", type=Path, required=True)
    parser.add_argument("--native", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args(argv)
    log = StepLog(args.log)
    try:
        count = install(args.rootfs, args.wheels, args.native, log)
    except BuildError as exc:
        print(f"venv: {exc}", file=sys.stderr)
        return 1
    finally:
        log.close()
    print(f"venv: {count} wheels installed into {VENV} (natively compiled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
