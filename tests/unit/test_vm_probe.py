"""The boot tier's readiness comes from what a VM says about itself (``PROBE``)."""

from picluster.vm.machine import VMState

BOOTING = """boot_id=0b1c
uptime=41.20
system=starting
cloud_init_started=yes
cloud_init_result=
agent=inactive
failed=
t:multi-user.target=
t:cloud-final.service=
"""

DONE = """boot_id=0b1c
uptime=301.77
system=running
cloud_init_started=yes
cloud_init_result={ "v1": {  "datasource": "DataSourceNoCloud",  "errors": [] }}
agent=active
failed=
t:multi-user.target=287000000
t:cloud-final.service=296500000
"""


def test_a_booting_vm_is_not_ready():
    state = VMState.parse(BOOTING)
    assert state is not None
    assert not state.booted and not state.ready
    assert state.cloud_init == "running"
    assert state.reached == {}


def test_a_finished_vm_is_ready_with_its_own_clock():
    state = VMState.parse(DONE)
    assert state is not None and state.ready
    assert state.cloud_init == "done"
    assert state.reached == {"multi-user.target": 287.0, "cloud-final.service": 296.5}


def test_cloud_init_errors_and_failed_units_are_reported():
    text = (
        DONE.replace('"errors": []', '"errors": ["bad seed"]')
        .replace("failed=", "failed=a.service b.service")
        .replace("system=running", "system=degraded")
    )
    state = VMState.parse(text)
    assert state is not None
    assert state.cloud_init == "error"
    assert state.ready, "finished with errors still ends the wait (the test then says why)"
    assert state.failed == ["a.service", "b.service"]
    assert "failed units: a.service b.service" in state.summary()


def test_no_answer_is_none():
    assert VMState.parse("") is None
    assert VMState.parse("Permission denied (publickey).") is None
