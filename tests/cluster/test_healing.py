"""The cluster heals: a restarted controller gets its engines back without
touching the engine hosts, and a map survives the loss of an engine host."""

import time

from tests.harness.cluster import wait_for

CONTROLLER = "[engines]\non_controller = 1\n"
ENGINE = "[engines]\nper_node = 2\n"

UUIDS = "result = sorted(rc._engines.values())"


def test_controller_restart_keeps_engines(cluster, cluster_secret):
    ctl = cluster.add("controller", CONTROLLER, cluster_secret)
    for i in (1, 2):
        cluster.add(f"engine-{i}", ENGINE, cluster_secret)
    before = cluster.client(
        "rc.wait_for_engines(5, timeout=120)\n" + UUIDS, cluster_secret, ctl.host.address
    )
    engine_pids = {
        name: n.host.pids("ipyparallel.engine") for name, n in cluster.nodes.items() if n is not ctl
    }

    ctl.kill()  # the controller Pi loses power
    ctl.start()
    after = cluster.client(
        "rc.wait_for_engines(5, timeout=120)\n" + UUIDS, cluster_secret, ctl.host.address
    )
    remote_before = [u for u in before if ":controller:" not in u]
    remote_after = [u for u in after if ":controller:" not in u]
    assert remote_after == remote_before, (
        "the restarted controller should have restored the engine hosts' engines, "
        f"not new ones: before {remote_before}, after {remote_after}"
    )
    for name, pids in engine_pids.items():
        now = cluster.nodes[name].host.pids("ipyparallel.engine")
        assert now == pids, f"{name} restarted its engines ({pids} -> {now})"
    hello = cluster.client(
        "result = rc[:].apply_sync(lambda: 'Hello World')", cluster_secret, ctl.host.address
    )
    assert hello == ["Hello World"] * 5


def test_map_survives_engine_host_loss(cluster, cluster_secret):
    ctl = cluster.add("controller", CONTROLLER, cluster_secret)
    for i in (1, 2, 3):
        cluster.add(f"engine-{i}", ENGINE, cluster_secret)
    marker = cluster.workdir / "map-started"
    run = cluster.start_client(
        f"""
        rc.wait_for_engines(7, timeout=120)
        def slow_square(x):
            import time
            time.sleep(0.25)
            return x * x
        view = rc.load_balanced_view()
        view.set_flags(retries=5)
        ar = view.map_async(slow_square, range(120), chunksize=2)
        while ar.progress < 10:
            time.sleep(0.05)
        Path({str(marker)!r}).write_text(str(ar.progress))
        result = ar.get(timeout=240)
        """,
        cluster_secret,
        ctl.host.address,
    )
    wait_for(
        marker.exists,
        180,
        "the load-balanced map reaching 10 finished chunks",
        on_fail=cluster.logs,
    )
    cluster.nodes["engine-2"].kill()
    started = time.monotonic()
    squares = run.result(timeout=300)
    assert squares == [x * x for x in range(120)], "the map lost or corrupted results"
    print(f"map finished {time.monotonic() - started:.1f} s after engine-2 died")
