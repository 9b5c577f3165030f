"""`picluster status` prints what mDNS records say; a stranger's record must print as text."""

from rich.console import Console

from picluster import status


def test_markup_in_a_node_record_prints_literally():
    hostile = "[/]"  # rich's closing tag with nothing open: a MarkupError if parsed
    view = status.View(
        cluster="picluster",
        controller="10.0.0.1",
        controller_iid=None,
        registered_total=None,
        hosts=[status.HostRow(hostile, "[bold]10.0.0.9", "[red]engine", "running", 1, 1)],
        problems=["[/] in a problem"],
    )
    console = Console(record=True, width=200)
    status.render(view, console)
    out = console.export_text()
    assert "[/]" in out and "[bold]10.0.0.9" in out and "[red]engine" in out
