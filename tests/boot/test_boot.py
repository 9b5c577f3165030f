"""The boot tier: the image tier's image boots as 1 controller + 2 engine VMs and forms a cluster.

Reuses the image built by tests/image (never rebuilds when its manifest is
present). The controller and engine-1 get their cards through ``picluster
cards`` + ``picluster seed`` (engine-1's cmdline.txt also gets what Raspberry
Pi Imager appends); the third VM boots the image exactly as built, takes an
address from the LAN's DHCP server and names itself after its MAC, and is seen
only from the LAN (``picluster status``, the DHCP server's leases and log, its
serial console). Every kernel gets its card's own cmdline.txt. The VMs run
under qemu-system-aarch64 (TCG) on a bridge in a network namespace this test
creates, with dnsmasq on the bridge as the home router. Serial logs and the
DHCP server's files land in artifacts/boot/ on failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from picluster.cards import bootfs
from picluster.vm.cluster import PY, SSH_OPTIONS, BootCluster, BootError, wait_for
from picluster.vm.machine import QEMU_CMDLINE, VM
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
        engines=1,
        unseeded=1,
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
    for name in ("dnsmasq.log", "dnsmasq.leases"):
        if (cluster.work / "dhcp" / name).exists():
            shutil.copy(cluster.work / "dhcp" / name, dest / name)


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


def seeded(cluster: BootCluster) -> list[VM]:
    return [vm for vm in cluster.vms if vm.seeded]


def unseeded(cluster: BootCluster) -> VM:
    (vm,) = [vm for vm in cluster.vms if not vm.seeded]
    return vm


def hosts(cluster: BootCluster) -> dict[str, dict]:
    """``picluster status --json`` on the LAN: host -> its row."""
    view = wait_for(cluster.status, 300, "picluster status on the LAN gave no answer", 5)
    return {row["host"]: row for row in view["hosts"]}


def test_first_boot_forms_the_cluster(booted):
    cluster = booted
    wait_ready(cluster, "first boot")
    for vm in seeded(cluster):
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
    assert set(hosts(cluster)) == {vm.name for vm in cluster.vms}, "not every VM is listed"
    for vm in seeded(cluster):
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
    """Every VM's engines (one per vCPU) registered; the moment is kept as a phase
    (an unseeded VM's was kept when ``wait_ready`` first saw it)."""
    got = cluster.registered()
    if not all(got.get(vm.name, 0) >= vm.cpus for vm in cluster.vms):
        return False
    for vm in cluster.vms:
        vm.seen.setdefault("engines registered", time.monotonic() - vm.started)
    return True


def test_a_card_nobody_named_names_itself_and_joins(booted):
    """The image as built, flashed and powered on: no seed, no key, no name. It takes an
    address from the home router's range, names itself engine-<last 6 hex digits of its
    MAC> (QEMU's virt board has no serial number) and registers its engines."""
    cluster = booted
    vm = unseeded(cluster)
    assert vm.name == "engine-" + vm.mac.replace(":", "")[-6:]
    lease = cluster.dhcp.leases().get(vm.mac) if cluster.dhcp else None
    assert lease is not None, f"{vm.name}: no DHCP lease for {vm.mac}"
    assert lease.from_range, f"{vm.name}: {lease.address} is not from the DHCP range"
    row = hosts(cluster).get(vm.name)
    assert row is not None, f"{vm.name} is not listed by picluster status"
    assert (row["role"], row["state"]) == ("engine", "running"), row
    assert row["registered"] == vm.cpus, row
    assert row["address"] == lease.address, (row, lease)
    # What it sent the router at first boot (the name is set by then, or not yet:
    # the second boot asks with its name for sure).
    print(f"{vm.name}: first-boot lease {lease}")
    assert "Linux version" in vm.serial(), f"{vm.name}: no kernel start on its console"


def test_the_pis_reach_each_other_by_name_with_no_key_copied(booted):
    """From the controller, the first user logs into every other card by its .local name
    (the unseeded one too, by the name it gave itself: avahi follows the rename) with no
    prompt and no flag: keys and host certificates derived from the cluster secret.
    ``picluster hostfile`` lists every card for mpirun."""
    cluster = booted
    wait_for(lambda: all_registered(cluster), 600, "not every VM's engines registered", 5)
    strict = "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes"
    for vm in cluster.vms[1:]:
        tries: list[str] = []

        def logged_in(vm: VM = vm, tries: list[str] = tries) -> bool:
            proc = cluster.ssh(0, f"{strict} {vm.name}.local hostname", 120)
            tries.append(proc.stdout + proc.stderr)
            return proc.returncode == 0 and proc.stdout.strip() == vm.name

        try:
            wait_for(logged_in, 240, f"ssh {vm.name}.local from the controller", 5)
        except BootError as exc:
            raise AssertionError(f"{exc}; last answer: {tries[-1:]}") from None
    lines = ssh_ok(cluster, 0, "sudo /opt/picluster/bin/picluster hostfile").splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(
        f"{vm.name}.local" for vm in cluster.vms
    ), lines


def test_addresses_are_a_home_networks(booted):
    """The controller's card says DHCP: it gets the address the router reserves for its
    MAC. engine-1's card gives a static address: it uses it and asks the router nothing."""
    cluster = booted
    leases = cluster.dhcp.leases() if cluster.dhcp else {}
    controller, engine = cluster.vms[0], cluster.vms[1]
    assert leases.get(controller.mac) is not None, f"controller: no lease ({leases})"
    assert leases[controller.mac].address == "10.213.0.10", leases[controller.mac]
    assert engine.mac not in leases, f"{engine.name} asked DHCP despite its static address"
    listed = hosts(cluster)
    assert listed["controller"]["address"] == "10.213.0.10", listed["controller"]
    assert listed[engine.name]["address"] == "10.213.0.11", listed[engine.name]


def test_every_kernel_gets_its_cards_cmdline_txt(booted):
    """What the Pi firmware would pass: the card's own cmdline.txt (after `picluster seed`
    and, on engine-1, Raspberry Pi Imager's `ds=nocloud;i=<id>`; the image's own for the
    unseeded VM), plus only QEMU's console. The kernel prints what it got."""
    cluster = booted
    for vm in cluster.vms:
        card = " ".join(bootfs.read_file(vm.disk, "cmdline.txt").decode().split())
        assert vm.cmdline == f"{card} {QEMU_CMDLINE}", vm.cmdline
        assert "root=" in card, f"{vm.name}: cmdline.txt without root=: {card}"
        # The serial log holds this boot's console (it is emptied at every start).
        assert f"Kernel command line: {vm.cmdline}\n" in vm.serial().replace("\r", ""), vm.name
    imager = cluster.vms[1]
    assert "ds=nocloud;i=" in imager.cmdline, imager.cmdline
    assert imager.state is not None and imager.state.cloud_init == "done", imager.summary()


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


# The tutorials' Dask session, run as the first user over ssh on the controller (an ssh
# session reads the TLS settings `picluster jupyter` wrote to ~/.config/dask, as a
# notebook does). After stop_dask the scheduler's port must close: a second
# become_dask binds the same fixed port.
DASK = r"""
import json, socket, time
import ipyparallel as ipp
import numpy as np
import dask.array as da
rc = ipp.Client(timeout=120)
rc.wait_for_engines(%(engines)d, timeout=300)
started = time.monotonic()
dc = rc.become_dask()
dc.wait_for_workers(%(engines)d, timeout=300)
workers = sorted(dc.scheduler_info()["workers"])
hosts = sorted(dc.run(socket.gethostname).values())
x = np.arange(1_000_000, dtype=np.int64).reshape(1000, 1000)
dx = da.from_array(x, chunks=(250, 250))
total = int(dx.sum().compute())
means = dx.mean(axis=1).compute()
seconds = time.monotonic() - started
scheduler, link = dc.scheduler.address, dc.dashboard_link
dc.close()  # first: a client left connected keeps trying to reach the stopped scheduler
rc.stop_dask()
host, port = scheduler.removeprefix("tls://").rsplit(":", 1)
closed, end = False, time.monotonic() + 60
while not closed and time.monotonic() < end:
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        time.sleep(1)
    except ConnectionRefusedError:
        closed = True
print("RESULT " + json.dumps({
    "scheduler": scheduler, "link": link, "workers": workers, "hosts": hosts,
    "chunks": dx.npartitions, "total": total, "numpy": int(x.sum()),
    "means": bool(np.allclose(means, x.mean(axis=1))), "closed": closed, "seconds": seconds,
}))
"""
DASK_CONFIG = "~/.config/dask/picluster.yaml"


def test_dask_on_the_controller_has_a_worker_on_every_pi(booted):
    """``rc.become_dask()`` from an ssh session on the controller: a TLS scheduler on the
    controller's LAN address at base_port+28, one worker per engine on every VM, a chunked
    ``dask.array`` reduction equal to NumPy's; ``rc.stop_dask()`` frees the port."""
    from picluster.config import ClusterSection
    from picluster.daskcluster import dashboard_path, scheduler_port

    cluster = booted
    total = sum(vm.cpus for vm in cluster.vms)
    wait_for(lambda: all_registered(cluster), 600, "not every VM's engines registered", 5)
    wait_for(
        lambda: cluster.ssh(0, f"test -s {DASK_CONFIG}", 60).returncode == 0,
        300, f"picluster jupyter never wrote {DASK_CONFIG} for {cluster.user}", 5,
    )  # fmt: skip
    script = DASK % {"engines": total}
    run = cluster.ssh(0, f"/opt/picluster/bin/python - <<'EOF'\n{script}\nEOF", timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    print(f"dask: become_dask to results in {result['seconds']:.1f} s: {result['workers']}")
    base = ClusterSection().base_port
    assert result["scheduler"] == f"tls://{cluster.address(cluster.vms[0])}:{scheduler_port(base)}"
    assert result["link"] == dashboard_path(base), result["link"]
    assert len(result["workers"]) == total, result["workers"]
    assert all(w.startswith("tls://") for w in result["workers"]), result["workers"]
    on = sorted(w.removeprefix("tls://").rsplit(":", 1)[0] for w in result["workers"])
    assert on == sorted(cluster.address(vm) for vm in cluster.vms for _ in range(vm.cpus)), on
    assert result["hosts"] == sorted(vm.name for vm in cluster.vms for _ in range(vm.cpus))
    assert result["chunks"] == 16
    assert result["total"] == result["numpy"] == 499_999_500_000
    assert result["means"], "row means differ from NumPy's"
    assert result["closed"], f"the scheduler still listens on {result['scheduler']} after stop_dask"


HELLO = re.compile(r"^Hello, World! I am process +(\d+) of (\d+) on (\S+)\.$", re.MULTILINE)


def test_mpi_hello_world_runs_a_rank_on_every_pi(booted):
    """What every Pi-cluster guide does once SSH works, as the first user on the controller:
    a hostfile (``picluster hostfile``: .local names, resolved by mDNS), then ``mpirun`` (on
    the PATH: a link to the venv's Open MPI, which hands its prefix to the prted it starts
    over ssh with the cluster key) running the venv's python, the same path on every card.
    One rank per core, so no --oversubscribe; helloworld passes a message along the ranks."""
    cluster = booted
    names = sorted(vm.name for vm in cluster.vms)
    wait_for(lambda: all_registered(cluster), 600, "not every VM's engines registered", 5)
    out = ssh_ok(cluster, 0, "readlink -f $(command -v mpirun mpiexec)")
    assert out.split() == ["/opt/picluster/bin/mpirun", "/opt/picluster/bin/mpiexec"], out
    listed: list[str] = []

    def hostfile() -> bool:
        """The hosts that announced themselves: every VM, once the cluster formed."""
        proc = cluster.ssh(0, "sudo /opt/picluster/bin/picluster hostfile > hosts; cat hosts", 120)
        listed[:] = proc.stdout.splitlines()
        return sorted(line.split()[0] for line in listed) == [f"{n}.local" for n in names]

    try:
        wait_for(hostfile, 120, "picluster hostfile did not list every VM", 5)
    except BootError as exc:
        raise AssertionError(f"{exc}: {listed}") from None
    ranks = sum(int(line.split("slots=")[1]) for line in listed)
    assert ranks == sum(vm.cpus for vm in cluster.vms), listed
    python = "/opt/picluster/bin/python"
    command = f"mpirun --hostfile hosts -n {ranks} {python} -m mpi4py.bench helloworld"
    started = time.monotonic()
    run = cluster.ssh(0, command, timeout=300)
    print(f"mpi: {command}: {time.monotonic() - started:.1f} s (ssh included)")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    hello = HELLO.findall(run.stdout)
    assert sorted(int(rank) for rank, _, _ in hello) == list(range(ranks)), run.stdout
    assert {int(size) for _, size, _ in hello} == {ranks}, run.stdout
    assert sorted(host for _, _, host in hello) == names, run.stdout
    assert {int(rank): host for rank, _, host in hello}[0] == "controller", run.stdout


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
    assert len(first_boots) == len(seeded(cluster)), "a VM did not answer before the power cycle"
    nameless = unseeded(cluster)
    acks = cluster.dhcp_acks(nameless)
    first_lease = cluster.dhcp.leases()[nameless.mac] if cluster.dhcp else None
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
    # The card that named itself: a new boot (a new kernel start on its console, emptied
    # at power-on; a new DHCP exchange), the same name, its engines back.
    assert nameless.boots == 2 and "Linux version" in nameless.serial()
    assert cluster.dhcp_acks(nameless) > acks, f"{nameless.name}: no DHCP request after power-on"
    lease = cluster.dhcp.leases()[nameless.mac] if cluster.dhcp else None
    assert lease is not None and first_lease is not None
    assert lease.hostname == nameless.name, f"it asked the router as {lease.hostname!r}"
    assert lease.address == first_lease.address, (first_lease, lease)
    listed = hosts(cluster)
    assert set(listed) == {vm.name for vm in cluster.vms}, f"renamed? {sorted(listed)}"
    assert listed[nameless.name]["state"] == "running", listed[nameless.name]
    assert listed[nameless.name]["registered"] == nameless.cpus, listed[nameless.name]


def test_the_cluster_ports_are_out_of_the_ephemeral_range(booted):
    """The agent unit's ExecStartPre=+ reserved base_port .. base_port+29 on the Pi."""
    from picluster.config import PORTS_USED, ClusterSection

    base = ClusterSection().base_port
    out = ssh_ok(booted, 0, "cat /proc/sys/net/ipv4/ip_local_reserved_ports")
    assert f"{base}-{base + PORTS_USED - 1}" in out, out
