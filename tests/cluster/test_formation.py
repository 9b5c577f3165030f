"""One controller and three engine hosts form a cluster by mDNS alone, and it
does the tutorials' work: hello world, scatter/gather, load-balanced map."""

CONTROLLER = """
[engines]
on_controller = 2
"""
ENGINE = """
[engines]
per_node = 2
"""


def test_cluster_forms_and_computes(cluster, cluster_secret):
    ctl = cluster.add("controller", CONTROLLER, cluster_secret)
    for i in range(1, 4):
        cluster.add(f"engine-{i}", ENGINE, cluster_secret)
    result = cluster.client(
        """
        rc.wait_for_engines(8, timeout=120)
        hosts = sorted(rc[:].apply_sync(__import__("socket").gethostname))
        hello = rc[:].apply_sync(lambda: "Hello World")
        dv = rc[:]
        dv.scatter("x", [10**i for i in range(64)], block=True)
        gathered = dv.gather("x", block=True)
        lview = rc.load_balanced_view()
        squares = lview.map(lambda v: v * v, range(100), chunksize=10, block=True)
        result = {"hosts": hosts, "hello": hello, "gathered": gathered, "squares": squares}
        """,
        cluster_secret,
        ctl.host.address,
    )
    assert result["hello"] == ["Hello World"] * 8
    assert result["hosts"] == sorted(
        ["controller"] * 2 + [f"engine-{i}" for i in range(1, 4) for _ in range(2)]
    ), "each engine host should run exactly 2 engines and the controller 2"
    assert result["gathered"] == [10**i for i in range(64)]
    assert result["squares"] == [v * v for v in range(100)]


def test_client_without_arguments_on_the_controller(cluster, cluster_secret, tmp_path):
    """``picluster client-file`` (the unit's root ExecStartPre) lets the first user
    call ``ipp.Client()`` with no arguments on the controller."""
    import stat
    import sys

    ctl = cluster.add("controller", CONTROLLER, cluster_secret)
    ipython_dir = tmp_path / "home" / ".ipython"
    out = ctl.host.run(
        sys.executable, "-m", "picluster", "client-file", "--user", "root",
        "--ipython-dir", str(ipython_dir),
        "--config", str(ctl.config), "--secret", str(ctl.secret),
    )  # fmt: skip
    client_file = ipython_dir / "profile_default" / "security" / "ipcontroller-client.json"
    assert str(client_file) in out.stdout
    assert stat.S_IMODE(client_file.stat().st_mode) == 0o600
    code = (
        "import ipyparallel as ipp; rc = ipp.Client(); rc.wait_for_engines(2, timeout=120); "
        "print(rc[:].apply_sync(lambda: 'Hello World'))"
    )
    env_run = ctl.host.run("env", f"IPYTHONDIR={ipython_dir}", sys.executable, "-c", code)
    assert env_run.stdout.strip() == "['Hello World', 'Hello World']"
