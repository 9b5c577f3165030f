"""The boot tier: the image tier's image boots as 1 controller + 2 engine VMs and forms a cluster.

Reuses the image built by tests/image (never rebuilds when its manifest is
present). Each VM gets its card through ``picluster cards`` + ``picluster
seed``; the VMs run under qemu-system-aarch64 (TCG) on a bridge in a network
namespace this test creates. Serial logs land in artifacts/boot/ on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from picluster.vm.cluster import PY, SSH_OPTIONS, BootCluster, BootError, wait_for
from tests.harness import imagebuild
from tests.harness.imagebuild import DEPLOY, REPO
from tests.image.conftest import build_image

pytestmark = [pytest.mark.root, pytest.mark.boot]

IDENTITY = "cloud-init status --long; hostname; /opt/picluster/bin/picluster role"

BOOT_DEADLINE = float(os.environ.get("PICLUSTER_BOOT_DEADLINE", "1500"))
ARTIFACTS = REPO / "artifacts" / "boot"


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not shutil.which("qemu-system-aarch64"):
        pytest.skip("qemu-system-aarch64 not installed (apt install qemu-system-arm)")
    # The image tier's build of this session, or (boot tier alone) the last one.
    if imagebuild.started() or not imagebuild.MANIFEST.exists():
        build_image()
    built = json.loads(imagebuild.MANIFEST.read_text())
    work = tmp_path_factory.mktemp("boot")
    cluster = BootCluster(
        image=Path(built["raw_image"]),
        secret=DEPLOY / "picluster.secret",
        work=work,
        engines=2,
        memory_mb=1024,
        cpus=1,
    )
    failed = True
    try:
        cluster.prepare()
        cluster.start()
        yield cluster
        failed = False
    finally:
        cluster.close()
        if failed or os.environ.get("PICLUSTER_KEEP_SERIAL"):
            keep_serial(cluster, "setup")
        cluster.remove_disks()


def keep_serial(cluster: BootCluster, label: str) -> None:
    dest = ARTIFACTS / label
    dest.mkdir(parents=True, exist_ok=True)
    for vm in cluster.vms:
        if vm.serial_log.exists():
            shutil.copy(vm.serial_log, dest / vm.serial_log.name)


@pytest.fixture(autouse=True)
def serial_on_failure(request, booted):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        keep_serial(booted, request.node.name)


def ssh_ok(cluster: BootCluster, index: int, command: str, accept: tuple[int, ...] = (0,)) -> str:
    """``command``'s output on VM ``index`` over ssh with the seed's key, retried while the
    emulated VM is slow to answer, until it exits with a code in ``accept``."""
    proc = wait_for(
        lambda: (p := cluster.ssh(index, command, 300)).returncode in accept and p,
        900, f"{cluster.vms[index].name}: ssh with the seed's key never ran `{command}`",
    )  # fmt: skip
    return proc.stdout


def wait_ready(cluster: BootCluster, what: str, old_boots: dict[str, str] | None = None) -> None:
    """Every VM says (over ssh) it booted, cloud-init finished and the agent runs."""
    try:
        cluster.wait_ready(BOOT_DEADLINE, old_boots)
    except BootError as exc:
        raise AssertionError(f"{what}: {exc}") from None


def test_first_boot_forms_the_cluster(booted):
    cluster = booted
    wait_ready(cluster, "first boot")
    for vm in cluster.vms:
        assert vm.state is not None
        assert vm.state.cloud_init == "done", f"{vm.name}: cloud-init {vm.state.summary()}"
        assert not vm.state.failed, f"{vm.name}: failed units: {vm.state.summary()}"
    # Registration first, so its moment is a phase figure; then each VM over ssh.
    want = {vm.name: vm.cpus for vm in cluster.vms}
    try:
        wait_for(lambda: all_registered(cluster), 600, "not every VM's engines registered", 5)
    except BootError as exc:
        raise AssertionError(f"{exc}: {cluster.registered()} (want {want})") from None
    record_phases(cluster, "first boot")
    for vm in cluster.vms:
        # Exit 2 (a usage or state error of the last command) is not retried: the
        # assertions below say what is wrong from the output.
        out = ssh_ok(cluster, vm.index, IDENTITY, accept=(0, 2))
        assert "status: done" in out, f"{vm.name}: cloud-init not done cleanly:\n{out}"
        assert "errors: []" in out or "error" not in out.split("status: done")[1].lower(), out
        lines = out.strip().splitlines()
        assert vm.name in lines, f"{vm.name}: hostname is not the seed's:\n{out}"
        role = "controller" if vm.name == "controller" else "engine"
        assert role in lines[-1] or role in out.split(vm.name)[-1], f"{vm.name}: role:\n{out}"


def all_registered(cluster: BootCluster) -> bool:
    """Every VM's engines (one per vCPU) registered; the moment is kept as a phase."""
    got = cluster.registered()
    if not all(got.get(vm.name, 0) >= vm.cpus for vm in cluster.vms):
        return False
    for vm in cluster.vms:
        vm.seen["engines registered"] = time.monotonic() - vm.started
    return True


def record_phases(cluster: BootCluster, label: str) -> None:
    for vm in cluster.vms:
        vm.update_phases()
    report = {vm.name: {k: round(v, 1) for k, v in vm.seen.items()} for vm in cluster.vms}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (ARTIFACTS / "phases.jsonl").open("a") as fh:
        fh.write(json.dumps({"boot": label, "vms": report}) + "\n")
    print(label, json.dumps(report))


# Run on the controller VM as the first user, like a notebook would: the
# engines run the image's CPython 3.13, and a function pickled by another
# Python version crashes them (code objects differ between versions).
CLIENT = r"""
import json, ipyparallel as ipp
rc = ipp.Client(timeout=120)             # no arguments: the client file is there
rc.wait_for_engines(%d, timeout=300)
hello = rc[:].apply_sync(lambda: "Hello World")
lview = rc.load_balanced_view()
squares = lview.map_sync(lambda x: x * x, range(32), chunksize=4)
print("RESULT " + json.dumps({"hello": hello, "squares": squares}))
"""


def test_client_on_the_controller_runs_jobs_on_every_engine(booted):
    cluster = booted
    total = sum(vm.cpus for vm in cluster.vms)
    script = CLIENT % total
    run = cluster.ssh(0, f"/opt/picluster/bin/python - <<'EOF'\n{script}\nEOF", timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["hello"] == ["Hello World"] * total
    assert result["squares"] == [x * x for x in range(32)]


def test_the_card_seed_is_readable_by_root_only(booted):
    """user-data on the FAT partition holds the secret: a local user other than root
    (here the daemon user ``nobody``) cannot read it; root can."""
    out = ssh_ok(
        booted, 1,
        "sudo -u nobody cat /boot/firmware/user-data > /dev/null 2>&1; echo nobody=$?;"
        " sudo cat /boot/firmware/user-data > /dev/null; echo root=$?",
    )  # fmt: skip
    assert "root=0" in out, out
    assert "nobody=0" not in out, "any local user can read the card's secret"


def test_ssh_refuses_passwords(booted):
    proc = booted.in_lan(
        ["ssh", *SSH_OPTIONS, "-o", "PubkeyAuthentication=no",
         "-o", "PreferredAuthentications=password,keyboard-interactive", "pi@10.213.0.11", "true"],
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 255
    assert "Permission denied (publickey)" in proc.stderr, proc.stderr


def test_jupyterlab_requires_the_token(booted, tmp_path):
    cluster = booted
    cluster.forward(8888, 18888)

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:18888{path}", timeout=20) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    wait_for(
        lambda: get("/api/status") in (200, 403), 300, "JupyterLab on the controller never answered"
    )
    assert get("/api/contents") == 403
    token = subprocess.run(
        [*PY, "url", "--secret", str(cluster.secret), "--host", "127.0.0.1", "--port", "18888"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().split("token=")[1]  # fmt: skip
    assert get(f"/api/contents?token={token}") == 200
    # The unit starts as root only to read the secret; the server is the first user's.
    owner = ssh_ok(
        cluster, 0, "ps -o user= -p $(systemctl show -p MainPID --value picluster-jupyter)"
    )
    assert owner.strip() == cluster.user, owner


def test_second_boot_forms_again_without_first_boot_work(booted):
    cluster = booted
    instance = "cat /var/lib/cloud/data/instance-id; ls /var/lib/cloud/instances | wc -l"
    before = ssh_ok(cluster, 0, instance)
    cluster.observe()
    first_boots = cluster.boot_ids()
    assert len(first_boots) == len(cluster.vms), "a VM did not answer before the power cycle"
    cluster.power_cycle()
    # Readiness from each VM itself: a new boot id, systemd up, cloud-init
    # finished, the agent active (the console may never print a login prompt).
    wait_ready(cluster, "second boot", old_boots=first_boots)
    wait_for(
        lambda: all_registered(cluster),
        900, "engines did not register again after the power cycle", interval=5,
    )  # fmt: skip
    after = ssh_ok(cluster, 0, instance)
    assert before == after, f"instance changed: {before!r} -> {after!r}"
    # cloud-init logs "Running module ssh" at every boot; whether the module's
    # once-per-instance work (host keys, authorized keys) ran is in its report.
    ran, skipped = ssh_ok(
        cluster, 0, "grep -c 'config-ssh ran successfully' /var/log/cloud-init.log;"
        " grep -c 'config-ssh previously ran' /var/log/cloud-init.log || true",
    ).split()  # fmt: skip
    assert ran == "1", f"cloud-init ran its once-per-instance ssh module again ({ran} times)"
    assert skipped != "0", "the second boot's cloud-init did not report skipping config-ssh"
    record_phases(cluster, "second boot")


def test_the_cluster_ports_are_out_of_the_ephemeral_range(booted):
    """The agent unit's ExecStartPre=+ reserved base_port .. base_port+29 on the Pi."""
    from picluster.config import PORTS_USED, ClusterSection

    base = ClusterSection().base_port
    out = ssh_ok(booted, 0, "cat /proc/sys/net/ipv4/ip_local_reserved_ports")
    assert f"{base}-{base + PORTS_USED - 1}" in out, out
