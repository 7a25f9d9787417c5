"""The adaptive throttle as a pure object: an injected clock, no relay (the relays
that push back are in test_relays.py, the figures in bench/throttle.py)."""

from __future__ import annotations

import logging

import pytest

from mailmand.smtp.throttle import HOLD, Throttle, is_pushback, reply_code


@pytest.mark.parametrize(("code", "text", "pushback"), [
    (421, "421 4.7.0 Try again later, closing connection.", True),  # Gmail
    (454, "454 Throttling failure: Maximum sending rate exceeded.", True),  # SES
    (451, "451 4.7.28 mail flood detected", True),
    (421, "421 4.7.0 too many connections from your host", True),
    (450, "450 4.7.0 too many messages", False),  # 450: about the mailbox, not the client
    (451, "451 4.7.1 greylisted, try again in 5 minutes", False),
    (451, "451 4.3.0 generated a local error", False),  # "rate" inside a word is not a rate
    (550, "550 5.7.1 rate limit exceeded", False),  # permanent: never a pushback
    (None, "connection failed: Connection refused", False),
])
def test_what_counts_as_a_pushback(code, text, pushback):
    assert is_pushback(code, text) is pushback


def test_the_code_inside_a_refused_session():
    assert reply_code("relay refused the session: 421 4.7.0 too many connections") == 421
    assert reply_code("connection failed: Connection refused") is None


def test_a_pushback_halves_once_per_episode_and_deliveries_grow_back_to_the_configured(caplog):
    now = [1000.0]
    t = Throttle("ses", 8, 20.0, clock=lambda: now[0])
    for _ in range(40):  # 20 a second for 2 s: the measured rate
        now[0] += 0.05
        t.delivered()
    caplog.set_level(logging.INFO, "mailmand.smtp.throttle")
    assert t.pushback("421 4.7.0 too many messages") is True
    assert (t.connections, t.rate, t.throttled) == (4, 10.0, True)
    assert t.pushback("421 4.7.0 too many messages") is False  # the replies in flight: the same episode
    assert (t.connections, t.rate) == (4, 10.0)
    now[0] += HOLD
    assert t.pushback("421 4.7.0 too many messages") is True  # a new episode
    assert (t.connections, t.rate) == (2, 5.0)
    rates = []
    for _ in range(2000):
        now[0] += 0.05
        t.delivered()
        rates.append(t.rate)
        assert t.rate is not None and t.rate <= 20.0 and t.connections <= 8  # never above the configured
    assert rates == sorted(rates)  # step by step
    assert (t.connections, t.rate, t.throttled) == (8, 20.0, False)
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "pushed back" in m]) == 2, said  # each decrease once
    assert len([m for m in said if "back to its configured" in m]) == 1, said


def test_with_no_configured_rate_the_limit_is_learnt_then_lifted():
    now = [0.0]
    t = Throttle("mx", 4, None, clock=lambda: now[0])
    assert t.bucket is None
    for _ in range(100):  # 50 a second
        now[0] += 0.02
        t.delivered()
    t.pushback("421 4.7.0 slow down")
    assert t.rate == pytest.approx(25.0, rel=0.05) and t.bucket is not None
    for _ in range(20):
        now[0] += 0.04
        t.delivered()
    assert 0.9 * 50 <= t.rate < 50  # quickly back near where it was pushed back
    for _ in range(100000):
        now[0] += 0.02
        t.delivered()
        if t.rate is None:
            break
    assert t.rate is None and t.bucket is None  # no pushback for long: no limit again
