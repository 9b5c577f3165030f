"""Checks on a built image's mounted root, shared by the image tier and the pigen tier
(the same stage run by our runner or by real pi-gen must pass the same checks)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

UNITS = ("picluster-agent.service", "picluster-jupyter.service", "avahi-daemon.service")
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


def units_enabled(root: Path, extra: tuple[str, ...] = ("ssh.service",)) -> None:
    wants = root / "etc/systemd/system/multi-user.target.wants"
    enabled = {p.name for p in wants.iterdir()}
    for unit in (*UNITS, *extra):
        assert unit in enabled, f"{unit} not enabled (multi-user wants: {sorted(enabled)})"


def secret_private(root: Path, deployed: Path) -> None:
    """/etc/picluster/secret is root's, 0600, and the one the build deployed (0600)."""
    secret = root / "etc/picluster/secret"
    st = secret.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert secret.read_text().strip() == deployed.read_text().strip()
    assert stat.S_IMODE(deployed.stat().st_mode) == 0o600


def cluster_config(root: Path) -> None:
    etc = root / "etc/picluster"
    assert (etc / "cluster.toml").is_file()
    assert stat.S_IMODE(etc.stat().st_mode) == 0o755
    cfg = (root / "etc/cloud/cloud.cfg.d/91-picluster-user.cfg").read_text()
    assert "lock_passwd: true" in cfg


def no_password(root: Path) -> None:
    for line in (root / "etc/shadow").read_text().splitlines():
        user, pw = line.split(":")[:2]
        assert not pw.lstrip("!").startswith("$"), f"{user} has a password hash"
    sshd = (root / "etc/ssh/sshd_config.d/50-picluster.conf").read_text()
    assert "PasswordAuthentication no" in sshd


def venv_imports(root: Path, version: str = "0.1.0") -> None:
    """The venv's packages import on the target CPU (qemu-user through binfmt)."""
    code = (
        "import ipyparallel, zeroconf, jupyterlab, numpy, picluster\n"
        # Dask and MPI: the native parts load on the target (cryptography's Rust
        # module; the venv's libmpi, without MPI_Init: no mpirun here), the pure ones
        # are there (distributed wants a /proc, which this chroot lacks).
        "import importlib.util, mpi4py\n"
        "from cryptography.hazmat.primitives.asymmetric import ed25519\n"
        "for m in ('dask.array', 'distributed', 'bokeh', 'jupyter_server_proxy'):\n"
        "    assert importlib.util.find_spec(m), m\n"
        "mpi4py.rc.initialize = False\n"
        "from mpi4py import MPI\n"
        "assert 'Open MPI' in MPI.Get_library_version(), MPI.Get_library_version()\n"
        "print(picluster.__version__)"
    )
    proc = subprocess.run(
        ["chroot", str(root), "/opt/picluster/bin/python", "-c", code],
        capture_output=True, text=True, timeout=600, env=CHROOT_ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # The last line: Open MPI's UCX says on stdout that it misses /proc here.
    assert proc.stdout.strip().splitlines()[-1] == version, proc.stdout
    proc = subprocess.run(
        ["chroot", str(root), "/opt/picluster/bin/picluster", "role", "--help"],
        capture_output=True, text=True, timeout=300, env=CHROOT_ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def mpi_on_path(root: Path) -> None:
    """``mpirun``/``mpiexec`` on every user's PATH: links to the venv's Open MPI
    (stage-cluster/00-venv/02-run.sh), absolute, so they hold on the card too."""
    for tool in ("mpirun", "mpiexec"):
        link = root / "usr/local/bin" / tool
        assert link.is_symlink(), f"{link} is not a link"
        target = str(link.readlink())
        assert target == f"/opt/picluster/bin/{tool}", f"{link} -> {target}"
        assert (root / "opt/picluster/bin" / tool).is_file(), f"the venv has no {tool}"


def venv_compiled(root: Path) -> None:
    venv = root / "opt/picluster/lib"
    missing = [
        p for p in venv.glob("python3.13/site-packages/ipyparallel/*.py")
        if not list(p.parent.glob(f"__pycache__/{p.stem}.cpython-313.pyc"))
    ]  # fmt: skip
    assert not missing, f"not compiled: {missing[:5]}"


def venv_listing(root: Path) -> list[str]:
    """Every path under /opt/picluster (bytecode included), for comparing two builds."""
    venv = root / "opt/picluster"
    return sorted(str(p.relative_to(venv)) for p in venv.rglob("*"))
