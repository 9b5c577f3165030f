"""`picluster status`: rows add up to the total, ghosts are flagged, and root is not
told to run as root (issue 14)."""

from rich.console import Console

from picluster import status


def view(total, verified, hosts):
    return status.View(
        cluster="picluster",
        controller="10.0.0.1",
        controller_iid="abc",
        registered_total=total,
        hosts=hosts,
        problems=[],
        verified=verified,
    )


def printed(v) -> str:
    console = Console(record=True, width=300)
    status.render(v, console)
    return console.export_text()


def test_a_ghost_row_is_flagged_and_counted():
    row = status.ghost_row("engine-2", 2)
    assert row.registered == 2 and row.engines == 0
    assert "ghost" in row.problems[0] and "engine-2" in row.problems[0]
    up = status.HostRow("engine-1", "10.0.0.2", "engine", "running", 2, 2, registered=2)
    out = printed(view(4, True, [up, row]))
    assert "4 engines registered" in out and "ghost" in out


def test_root_with_the_secret_is_not_told_to_run_as_root():
    row = status.HostRow("engine-1", "10.0.0.2", "engine", "running", 2, 2)
    assert "run as root" not in printed(view(None, True, [row]))
    assert "run as root" in printed(view(None, False, [row]))
