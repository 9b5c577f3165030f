"""Every command, handed a bad path, file, name or number, answers with an exit
status and a message that names the problem, never a traceback. One table for
the whole CLI: a command added later gets its rows here."""

from __future__ import annotations

import logging

import pytest

from picluster.cli import main

# argv with {placeholders} -> (exit status, fragment of what it prints)
CASES = [
    (["role", "--config", "{dir}"], 78, "cannot read (Is a directory)"),
    (["role", "--config", "{bad_toml}"], 78, "not valid TOML"),
    (["role", "--config", "{binary}"], 78, "not UTF-8 text"),
    (["doctor", "--config", "{bad_toml}"], 1, "not valid TOML"),
    (["url", "--secret", "{dir}"], 78, "name the secret file itself"),
    (["url", "--port", "many"], 2, "invalid int value"),
    (["status", "--wait", "soon"], 2, "invalid float value"),
    (["client-file", "--secret", "{dir}"], 78, "name the secret file itself"),
    (["client-file", "--user", "no-such-user", "--secret", "{secret}"], 78, "no such user"),
    (["agent", "--config", "{bad_toml}", "--secret", "{secret}"], 78, "not valid TOML"),
    (["agent", "--config", "{absent}", "--secret", "{open_secret}"], 78, "chmod 600"),
    (["jupyter", "--config", "{bad_toml}"], 78, "not valid TOML"),
    (["secret", "new", "{secret}"], 1, "--force"),
    (["cards", "{absent}"], 78, "copy examples/cluster-manifest.toml"),
    (["cards", "{dir}"], 78, "cannot read (Is a directory)"),
    (["cards", "{binary}"], 78, "not UTF-8 text"),
    (["lint", "{text}"], 78, "no MBR partition table"),
    (["lint", "{absent}"], 78, ""),
    (["seed", "{absent}", "--card", "{card}", "--output", "{out}"], 1, "no such image file"),
    (["seed", "{text}", "--card", "{dir}", "--output", "{out}"], 1, "missing user-data"),
    (["flash", "{absent}", "/dev/null", "--yes"], 1, "no such image file"),
    (["flash", "{text}", "/dev/null", "--yes"], 1, "not a block device"),
]


@pytest.fixture
def places(tmp_path, monkeypatch):
    from picluster import secret

    monkeypatch.setenv("PICLUSTER_HOSTNAME", "engine-1")
    monkeypatch.setenv("PICLUSTER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "dir").mkdir()
    (tmp_path / "bad.toml").write_text("[cluster\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00binary")
    (tmp_path / "text").write_text("hello\n")
    secret.write(tmp_path / "secret", secret.generate())
    secret.write(tmp_path / "open-secret", secret.generate())
    (tmp_path / "open-secret").chmod(0o644)
    card = tmp_path / "card"
    card.mkdir()
    (card / "user-data").write_text("#cloud-config\n")
    (card / "meta-data").write_text("instance-id: x\n")
    return {
        "dir": tmp_path / "dir", "bad_toml": tmp_path / "bad.toml",
        "binary": tmp_path / "binary", "text": tmp_path / "text",
        "secret": tmp_path / "secret", "open_secret": tmp_path / "open-secret",
        "absent": tmp_path / "absent", "card": card, "out": tmp_path / "out.img",
    }  # fmt: skip


@pytest.mark.parametrize(("argv", "code", "fragment"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_gets_a_status_and_a_message(places, capsys, caplog, argv, code, fragment):
    caplog.set_level(logging.INFO)
    args = [a.format(**places) for a in argv]
    try:
        got = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        got = exc.code
    printed = capsys.readouterr()
    said = printed.out + printed.err + caplog.text
    assert got == code, f"{args}: exit {got}, expected {code}\n{said}"
    assert fragment in said, f"{args}: {fragment!r} not in\n{said}"
    assert "Traceback" not in said
