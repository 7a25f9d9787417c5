"""Repeats: a flood of one error becomes one full line, then a summary a minute, then "cleared"."""

from __future__ import annotations

import logging

import pytest

from mailmand.repeats import Repeats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_failure_in_full_then_one_summary_per_period(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    r = Repeats(logging.getLogger("t"), "relay down", every=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(1100):  # 65 s of failures
            r.failed("cannot connect to %s", "relay.test:25")
            clock.now += 0.059
        r.failed("cannot connect to %s", "relay.test:25")
        clock.now += 30
        assert r.cleared()
    lines = [rec.getMessage() for rec in caplog.records]
    assert lines[0] == "cannot connect to relay.test:25"
    assert len(lines) == 3, lines
    assert lines[1].startswith("relay down: ") and "more time(s)" in lines[1] and "relay.test:25" in lines[1]
    assert "cleared after" in lines[2] and "(1101 failure(s))" in lines[2]
    assert not r.active and not r.cleared()  # clearing twice logs nothing


def test_a_new_outage_is_logged_in_full_again(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    r = Repeats(logging.getLogger("t"), "spool full", clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        assert r.failed("first")
        assert not r.failed("again")
        r.cleared()
        assert r.failed("second outage")
    assert [rec.getMessage() for rec in caplog.records][-1] == "second outage"
