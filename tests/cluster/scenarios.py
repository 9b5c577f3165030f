"""The cluster tier's scenarios, one table entry each, run by ``test_scenarios.py``.

Every scenario gets a fresh LAN of network namespaces, with the real agent on
each host (its own hostname, cluster.toml, secret and state dir), real
ipcontroller/ipengine and real multicast. Its steps run in this order:

    nodes   the cards that boot (``join``); each names its secret, "cluster" by default
    before  what must hold before the fault, and what to remember (``remember_*``)
    fault   what goes wrong: ``power_cut``, ``stop_agent``, ``drop_multicast``, a bad
            card joining, a stranger listening...
    expect  what must then be true; each check waits at most ``deadline`` seconds
            (default 120) and says what did not happen

To add a failure case, add a ``Scenario(...)`` to ``SCENARIOS`` below, built from
the steps in ``steps.py``. Its ``name`` becomes the test id
(``pytest tests/cluster -k <name>``) and, when it fails, the directory under
``artifacts/cluster/`` that keeps every host's config, state and agent log. Only
when no existing step says what you need, add one to ``steps.py``: a function
returning ``Step(what, run)``, whose ``what`` reads as a sentence in a failure
report, and which waits with ``scene.wait_for`` rather than sleeping.
"""

from __future__ import annotations

from tests.cluster.steps import (  # healing (issue 14)
    CONTROLLER_NAME,
    Scenario,
    agent_exits,
    client_file_connects,
    doctor_fails_with,
    drop_multicast,
    each_controller_sees,
    engine_hosts,
    engine_output_reaches_client,
    engine_pids_unchanged,
    engines_back,
    engines_started_long_before,
    ghosts_gone,
    hello_world,
    hostfile_lists,
    join,
    keeps_name,
    laptop_connects,
    load_balanced_map,
    log_matches,
    log_says,
    log_says_stranger,
    map_completes,
    map_without_retries,
    no_agent_traceback,
    no_engine_state,
    no_process,
    no_secret_in_log,
    nothing_left_running,
    power_cut,
    readdress,
    remember_engine_ids,
    remember_engine_pids,
    remember_engines,
    restart_agent,
    same_engines_as,
    scatter_gather,
    self_named,
    start,
    start_map,
    static_controller,
    status_cli_problem,
    status_cli_reports,
    status_flags_ghost,
    status_is,
    stop_agent,
    stranger_announces,
    stranger_heard_nothing,
    stranger_listens,
    unnamed,
)

CONTROLLER = "[engines]\non_controller = 1\n"
CONTROLLER_2 = "[engines]\non_controller = 2\n"
ENGINE = "[engines]\nper_node = 2\n"


def named(cluster: str, config: str) -> str:
    return f'[cluster]\nname = "{cluster}"\n' + config


def controller_and_engine_hosts(n: int) -> list:
    """The usual LAN: a controller with 1 engine and ``n`` engine hosts with 2 each."""
    return [join("controller", CONTROLLER)] + [join(f"engine-{i}", ENGINE) for i in range(1, n + 1)]


# The engines of ``controller_and_engine_hosts(2)``, by host.
USUAL_ENGINES = {"controller": 1, "engine-1": 2, "engine-2": 2}

# A controller that comes back gets the engine hosts' engines back, untouched.
ENGINES_NOTED = [remember_engines("before", 5), remember_engine_pids("engine-1", "engine-2")]
ENGINES_RESTORED = [
    same_engines_as("before", 5, except_on="controller"),
    engine_pids_unchanged(),
    hello_world(5),
]


# -- authenticated records (issue 14) ----------------------------------------------------
CONTROLLER_TYPE, NODE_TYPE = "_ipyparallel._tcp.local.", "_picluster._tcp.local."
FORMED = {"controller": 1, "engine-1": 2, "engine-2": 2}
SPOOF = {"v": "1", "cluster": "picluster", "port": "47000", "ipp": "9.2.0",
         "iid": "5900f5900f59", "fp": "000000000000", "curve": "1"}  # fmt: skip
CRAFTED_NODE = {"v": "1", "host": "[/]", "role": "[bold red]controller", "cluster": "picluster",
                "engines": "99", "registered": "99", "state": "[/]running", "fp": "[/]",
                "version": "0"}  # fmt: skip
STILL_THE_REAL_CONTROLLER = [
    log_says_stranger("engine-1"),
    engine_pids_unchanged(),
    engine_hosts(FORMED, why="the engines must stay with the real controller"),
    status_is("controller", "running"),
    status_is("engine-2", "running"),
    status_cli_problem(
        "controller", "unauthenticated record from {stranger}", hosts=sorted(FORMED)
    ),
]

SCENARIOS = [
    # -- formation: the cluster forms by mDNS alone and does the tutorials' work ---------
    Scenario(
        "cluster-forms-and-computes",
        "One controller and three engine hosts form a cluster by mDNS alone and run "
        "hello world, scatter/gather and a load-balanced map.",
        nodes=[join("controller", CONTROLLER_2)] + [join(f"engine-{i}", ENGINE) for i in (1, 2, 3)],
        expect=[
            engine_hosts(
                {"controller": 2, "engine-1": 2, "engine-2": 2, "engine-3": 2},
                why="each engine host should run exactly 2 engines and the controller 2",
            ),
            hello_world(8),
            scatter_gather(64, n=8),
            load_balanced_map(100, n=8),
            laptop_connects(8),
        ],
    ),
    Scenario(
        "client-without-arguments-on-the-controller",
        "`picluster client-file` (the unit's root ExecStartPre) lets the first user call "
        "ipp.Client() with no arguments on the controller.",
        nodes=[join("controller", CONTROLLER_2)],
        expect=[client_file_connects("controller", 2)],
    ),
    Scenario(
        "identical-cards-name-themselves",
        "Two cards flashed with the image alone (hostname raspberrypi, no board serial) "
        "whose MACs end alike boot together: both name themselves from their MAC, end up "
        "with different names and join; after a reboot each keeps its name.",
        nodes=[
            join("controller", CONTROLLER),
            unnamed("card-a", "02:00:00:ab:cd:ef", ENGINE),
            unnamed("card-b", "06:00:00:ab:cd:ef", ENGINE),
        ],
        before=[self_named({"card-a": "02:00:00:ab:cd:ef", "card-b": "06:00:00:ab:cd:ef"}, 2)],
        fault=[stop_agent("card-a"), stop_agent("card-b"), start("card-a"), start("card-b")],
        expect=[
            keeps_name("card-a"),
            keeps_name("card-b"),
            self_named({"card-a": "02:00:00:ab:cd:ef", "card-b": "06:00:00:ab:cd:ef"}, 2),
        ],
    ),
    # -- healing: a failure is survived without touching the other hosts -----------------
    Scenario(
        "controller-power-cut-keeps-engines",
        "The controller Pi loses power and boots again: the engine hosts keep their engines "
        "and the controller restores them.",
        nodes=controller_and_engine_hosts(2),
        before=ENGINES_NOTED,
        fault=[power_cut("controller"), start("controller")],
        expect=ENGINES_RESTORED,
    ),
    Scenario(
        "controller-agent-restart-keeps-engines",
        "`systemctl restart picluster` on the controller: the agent says goodbye, the "
        "engine hosts wait with their engines up and rejoin the restarted controller.",
        nodes=controller_and_engine_hosts(2),
        before=ENGINES_NOTED,
        fault=[stop_agent("controller"), start("controller")],
        expect=ENGINES_RESTORED,
    ),
    Scenario(
        "map-survives-engine-host-power-cut",
        "An engine host loses power in the middle of a load-balanced map; the map "
        "retries its tasks elsewhere and returns every result.",
        nodes=controller_and_engine_hosts(3),
        before=[start_map("map", n_engines=7, tasks=120)],
        fault=[power_cut("engine-2")],
        expect=[map_completes("map", tasks=120)],
    ),
    # -- isolation: who may join, and who may listen ---------------------------------------
    Scenario(
        "wrong-secret-is-refused-and-explained",
        "A card with another cluster's secret starts no engines, says why in its log and "
        "in `picluster status`, and never joins.",
        nodes=[join("controller", CONTROLLER), join("engine-1", ENGINE)],
        fault=[join("engine-2", ENGINE, secret="another")],
        expect=[
            status_is("engine-2", "fingerprint-mismatch", why="wrong secret"),
            log_says("engine-2", "key fingerprint does not match"),
            engine_hosts({"controller": 1, "engine-1": 2}, why="engine-2 must not have joined"),
            no_process(
                "engine-2",
                "picluster.ipengine",
                "engine-2 started engines although its key cannot work",
            ),
            status_cli_reports(
                on="engine-2",
                about="engine-2",
                problem="key fingerprint does not match",
                exit_code=1,
            ),
            no_secret_in_log("engine-2"),
        ],
    ),
    Scenario(
        "two-clusters-on-one-lan-do-not-mix",
        "Two clusters with their own names and secrets share a LAN; each controller sees "
        "only its own engines.",
        nodes=[
            join("alpha-controller", named("alpha", CONTROLLER), secret="alpha"),
            join("beta-controller", named("beta", CONTROLLER), secret="beta"),
        ]
        + [join(f"{c}-{i}", named(c, ENGINE), secret=c) for i in (1, 2) for c in ("alpha", "beta")],
        expect=[
            each_controller_sees(
                {
                    "alpha-controller": {"alpha-controller": 1, "alpha-1": 2, "alpha-2": 2},
                    "beta-controller": {"beta-controller": 1, "beta-1": 2, "beta-2": 2},
                },
                settle=3,
            )
        ],
    ),
    Scenario(
        "static-controller-address-without-multicast",
        "An engine host whose network drops multicast joins through the controller "
        "address written in its cluster.toml.",
        nodes=[
            join("controller", CONTROLLER),
            join("engine-1", static_controller(ENGINE), start=False),
        ],
        fault=[drop_multicast("engine-1"), start("engine-1")],
        expect=[engine_hosts({"controller": 1, "engine-1": 2})],
    ),
    Scenario(
        "malformed-config-starts-nothing",
        "A cluster.toml with a wrong value and a misspelt key: the agent exits EX_CONFIG, "
        "names the file, key and fix, and leaves nothing behind.",
        nodes=[join("engine-1", '[engines]\nper_node = "many"\nper_nod = 1\n')],
        expect=[
            agent_exits("engine-1", 78, "EX_CONFIG"),
            log_matches("engine-1", r"cluster\.toml: \[engines\] per_node: must be \"auto\""),
            log_says("engine-1", "did you mean"),
            nothing_left_running("engine-1"),
            no_engine_state("engine-1"),
        ],
    ),
    Scenario(
        "second-controller-with-same-name-is-reported",
        "A second controller for the same cluster starts no ipcontroller and both it and "
        "`picluster status` on the first say there are two controllers.",
        nodes=[join("controller", CONTROLLER)],
        before=[status_is("controller", "running", why="the first controller")],
        fault=[join("head", CONTROLLER)],
        expect=[
            status_is("head", "duplicate-controller", why="the second controller"),
            no_process("head", "picluster.ipcontroller", "head kept an ipcontroller running"),
            status_cli_reports(on="controller", about="head", problem="two controllers"),
        ],
    ),
    Scenario(
        "a-stranger-on-the-lan-cannot-read-the-cluster-traffic",
        "A host without the secret subscribes to the controller's client-facing iopub "
        "port (base + 12) while engines print: it hears nothing.",
        nodes=[join("controller", CONTROLLER), join("engine-1", ENGINE)],
        fault=[stranger_listens(47000 + 12)],
        expect=[engine_output_reaches_client(3, "overheard"), stranger_heard_nothing()],
    ),
    # -- healing (issue 14): address changes, ghosts, a doctor that tests ------------------
    Scenario(
        "controller-re-addressed-engines-follow",
        "The controller's address changes (a DHCP renewal): it announces the new one "
        "and every engine host re-registers its engines there within 10 s.",
        nodes=controller_and_engine_hosts(2),
        before=[engine_hosts(USUAL_ENGINES)],
        fault=[readdress("controller", 200)],
        expect=[
            engines_back(USUAL_ENGINES, within=10, since="controller readdressed"),
            no_agent_traceback("controller", "zeroconf must not log tracebacks"),
        ],
    ),
    Scenario(
        "engines-started-long-before-the-controller",
        "Engine hosts (one by mDNS, one with a static address) boot 45 s before the "
        "controller: their engines are back within 10 s of the controller's start. (The "
        "issue asks 90 s; 45 s is the CI variant: an engine host starts no ipengine "
        "before the controller's port answers, so nothing changes with the wait. The "
        "90 s variant passed too, see bench/README.md.)",
        nodes=[
            join("controller", CONTROLLER, start=False),
            join("engine-1", ENGINE),
            join("engine-2", static_controller(ENGINE)),
        ],
        fault=[engines_started_long_before("controller", 45)],
        expect=[engines_back(USUAL_ENGINES, within=10, since="controller started")],
    ),
    Scenario(
        "no-ghosts-after-controller-down-and-engine-host-lost",
        "The controller goes down, an engine host is lost meanwhile, the controller "
        "comes back: the lost host's engines are never listed and a 200-task map "
        "without retries completes.",
        nodes=controller_and_engine_hosts(2),
        before=[remember_engine_ids("lost", "engine-2", 5)],
        fault=[power_cut("controller"), power_cut("engine-2"), restart_agent("controller")],
        expect=[
            map_without_retries(200, n=3),
            ghosts_gone("lost", within=30, since="controller started"),
            engine_hosts({"controller": 1, "engine-1": 2}, why="engine-2 is gone"),
        ],
    ),
    Scenario(
        "engine-host-reboot-leaves-no-ghost",
        "An engine host loses power and boots again: its agent unregisters the engines "
        "it ran before, so they are gone within 5 s and work on all engines completes.",
        nodes=controller_and_engine_hosts(2),
        before=[remember_engine_ids("old", "engine-1", 5)],
        fault=[power_cut("engine-1"), restart_agent("engine-1")],
        expect=[
            ghosts_gone("old", within=5, since="engine-1 started"),
            engines_back(USUAL_ENGINES, within=15, since="engine-1 started"),
        ],
    ),
    Scenario(
        "status-flags-the-engines-of-a-lost-host",
        "An engine host loses power: until the controller drops its engines, "
        "`picluster status` lists them in a row of their own, flagged as ghosts, and its "
        "rows add up to its total.",
        nodes=controller_and_engine_hosts(2),
        before=[engine_hosts(USUAL_ENGINES)],
        fault=[power_cut("engine-2")],
        expect=[status_flags_ghost(on="controller", lost="engine-2")],
    ),
    Scenario(
        "multicast-blocked-doctor-names-the-static-address",
        "Multicast is dropped on an engine host without a static controller address: "
        "`picluster doctor` fails its mDNS round trip and names the fix; the agent logs "
        "no traceback.",
        nodes=[join("controller", CONTROLLER), join("engine-1", ENGINE, start=False)],
        fault=[drop_multicast("engine-1"), start("engine-1")],
        expect=[
            doctor_fails_with(
                "engine-1", '[cluster] controller = "', 'discovery = "static"', "address ="
            ),
            no_agent_traceback("engine-1", "blocked multicast must be one clear line"),
        ],
    ),
    # -- authenticated records (issue 14): what a stranger on the LAN can announce ----------
    *[
        Scenario(
            name,
            why,
            nodes=controller_and_engine_hosts(2),
            before=[engine_hosts(FORMED), remember_engine_pids("engine-1", "engine-2")],
            fault=[spoof],
            expect=STILL_THE_REAL_CONTROLLER,
        )
        for name, why, spoof in (
            (
                "spoofed-controller-record-is-ignored",
                "A stranger announces the controller's name with another key fingerprint "
                "(no secret, no seal): no engine host stops or moves its engines.",
                stranger_announces(
                    "a controller record with another fingerprint",
                    {"type": CONTROLLER_TYPE, "name": CONTROLLER_NAME, "props": SPOOF},
                ),
            ),
            (
                "copied-controller-record-with-another-address-is-ignored",
                "A stranger copies the controller's (public, sealed) TXT and announces it "
                "under its own address: the seal covers the addresses, nobody follows it.",
                stranger_announces(
                    "a copy of the controller's record at its own address",
                    {"type": CONTROLLER_TYPE, "name": CONTROLLER_NAME, "copy": CONTROLLER_NAME},
                ),
            ),
        )
    ],
    Scenario(
        "name-squatted-before-the-controller-starts",
        "A stranger claims the controller's mDNS name before the controller boots: the "
        "controller still starts ipcontroller (under another name) and the engines join it.",
        nodes=[join("controller", CONTROLLER, start=False)]
        + [join(f"engine-{i}", ENGINE) for i in (1, 2)],
        fault=[
            stranger_announces(
                "a record claiming the controller's name",
                {"type": CONTROLLER_TYPE, "name": CONTROLLER_NAME, "props": SPOOF},
            ),
            start("controller"),
        ],
        expect=[
            engine_hosts(FORMED, why="the engines must join the real controller"),
            status_is("controller", "running", why="ipcontroller despite the squatter"),
            log_says_stranger("controller"),
            status_cli_problem(
                "controller", "unauthenticated record from {stranger}", hosts=sorted(FORMED)
            ),
        ],
    ),
    Scenario(
        "crafted-node-record-is-not-a-member",
        "A stranger announces a node record of our cluster with rich markup in its fields: "
        "`picluster status` prints it as a problem (text, no traceback), not as a host.",
        nodes=controller_and_engine_hosts(2),
        before=[engine_hosts(FORMED)],
        fault=[
            stranger_announces(
                "a node record with markup in its fields",
                {"type": NODE_TYPE, "name": f"[/]evil.{NODE_TYPE}", "props": CRAFTED_NODE},
            )
        ],
        expect=[
            status_cli_problem(
                "controller", "unauthenticated record from {stranger}", hosts=sorted(FORMED)
            ),
            engine_hosts(FORMED),
            status_is("controller", "running"),
            hostfile_lists(FORMED),  # issue 16: MPI's hostfile, strangers left out
        ],
    ),
]
