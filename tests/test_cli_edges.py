"""Rough edges a new user met, each fixed: durations in words, help that says
what each flag does, choices that work, a headerless `sendmail -t` that says
what is missing."""

from __future__ import annotations

import argparse
import time

import pytest

from mailmand.cli import build_parser, main
from mailmand.config import load
from mailmand.stores import open_store
from mailmand.stores.model import OPERATOR_MOVES
from tests.conftest import run_cli


def stored(conf, message_id: str):
    assert main(["--once", "-c", str(conf)]) == 0
    store = open_store(load(conf).server.database)
    try:
        return store.get(message_id)
    finally:
        store.close()


def test_send_in_and_at_take_what_people_write(write_config, tmp_path, capsys):
    conf = write_config(9)

    def send(*args: str) -> str:
        capsys.readouterr()
        assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com", *args]) == 0
        return capsys.readouterr().out.strip()

    before = time.time()
    words = send("--text", "x", "--in", "5", "minutes")
    letters = send("--text", "x", "--in", "1h30m")
    spaced = send("--text", "x", "--at", "2031-01-01", "09:00")
    # A FILE after the duration is the message, as before.
    (tmp_path / "m.eml").write_bytes(b"From: a@example.com\r\nTo: b@example.com\r\nSubject: f\r\n\r\nx\r\n")
    from_file = send("--in", "2", "hours", str(tmp_path / "m.eml"))
    assert stored(conf, words).send_after == pytest.approx(before + 300, abs=30)
    assert stored(conf, letters).send_after == pytest.approx(before + 5400, abs=30)
    assert stored(conf, from_file).send_after == pytest.approx(before + 7200, abs=30)
    from datetime import datetime

    assert stored(conf, spaced).send_after == datetime(2031, 1, 1, 9, 0).timestamp()
    capsys.readouterr()
    assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com", "--text", "x",
                 "--in", "5", "fortnights"]) == 2
    assert "--in: expected a duration such as 90s, 5m, 1h30m, 2d or '5 minutes'" in capsys.readouterr().err


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("command", ["send", "list", "cancel", "retry", "hold", "release", "stats"])
def test_every_flag_says_what_it_does(command):
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    bare = [a.option_strings[0] for a in _options(sub) if not a.help and a.option_strings != ["-c", "--config"]]
    assert bare == [], f"mailmand {command}: flags with no description"


def test_the_status_choices_are_the_ones_the_move_takes(capsys):
    for move, allowed in OPERATOR_MOVES.items():
        if move == "flush":
            continue
        parser = build_parser(move)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[move]
        [status] = [a for a in sub._actions if "--status" in a.option_strings]
        assert list(status.choices) == [s.value for s in allowed], move
    assert main(["cancel", "--status", "sent"]) == 2
    assert "--status: invalid choice: 'sent'" in capsys.readouterr().err


def test_a_headerless_sendmail_t_says_what_is_missing(write_config):
    env = {"MAILMAND_CONFIG": str(write_config(9))}
    got = run_cli("sendmail", "-t", env=env, input=b"just a body, no header\n")
    assert got.returncode == 65
    assert got.stderr.decode().strip() == \
        "sendmail: to: no recipient: the message has no To, Cc or Bcc header, and none was given"
