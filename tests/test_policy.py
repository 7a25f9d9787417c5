"""The retry policy as pure functions: no server, no store, an injected random."""

from __future__ import annotations

import dataclasses

import pytest

from mailmand import policy
from mailmand.config import BackoffConfig, ServerConfig
from mailmand.smtp import Kind, RecipientResult, SendResult
from mailmand.stores.model import Claimed, Status

CFG = ServerConfig(max_fails=3, max_time=3600, backoff=BackoffConfig(min=30, max=900))
NOW = 1_000_000.0


def claimed(attempts: int = 0, rcpt: tuple[str, ...] = ("a@x.org",), send_after: float = NOW) -> Claimed:
    return Claimed("id1", "s@x.org", rcpt, b"raw", attempts, send_after, 0, fails=attempts)


def result(kind: str, code: int | None, reply: str, *rcpts: tuple[str, str, int | None, str],
           lost_in_data: bool = False) -> SendResult:
    recipients = tuple(RecipientResult(a, c, r, Kind(k)) for a, k, c, r in rcpts)
    return SendResult("id1", Kind(kind), code, reply, recipients, NOW, 0.01, "relay:25", lost_in_data)


SENT = result("sent", 250, "250 ok", ("a@x.org", "sent", 250, "250 ok"))
TEMP = result("temporary", 451, "451 4.3.0 later", ("a@x.org", "temporary", 451, "451 4.3.0 later"))
PERM = result("permanent", 550, "550 5.1.1 unknown", ("a@x.org", "permanent", 550, "550 5.1.1 unknown"))
DROPPED = result("temporary", None, "connection lost during DATA")
UNREACHABLE = result("temporary", None, "connection failed: Connection refused",
                     ("a@x.org", "temporary", None, "connection failed: Connection refused"))
HUNG_UP = result("temporary", None, "end of data: connection closed by relay",
                 ("a@x.org", "temporary", None, "end of data: connection closed by relay"), lost_in_data=True)


@pytest.mark.parametrize("rand", [0.0, 0.5, 1.0])
def test_backoff_grows_exponentially_within_bounds(rand):
    delays = [policy.backoff(n, CFG.backoff, lambda: rand) for n in range(1, 12)]
    assert all(30 <= d <= 900 for d in delays)
    assert delays[:5] == sorted(delays[:5]) and len(set(delays[:5])) == 5  # strictly longer each time
    assert delays[1] / delays[0] >= 1.5 and delays[3] / delays[2] >= 1.5
    assert delays[-1] == pytest.approx(900 * (0.75 + rand / 4))  # capped at max, still spread below it


@pytest.mark.parametrize("attempt", [1, 3, 20])
def test_backoff_jitter_spreads_retries_from_the_first(attempt):
    spread = {round(policy.backoff(attempt, CFG.backoff, lambda r=r: r / 10), 3) for r in range(11)}
    assert len(spread) == 11 and min(spread) >= 30 and max(spread) <= 900


def test_backoff_never_shrinks_whatever_the_jitter():
    for n in range(1, 10):
        assert policy.backoff(n + 1, CFG.backoff, lambda: 0.0) > policy.backoff(n, CFG.backoff, lambda: 1.0) \
            or policy.backoff(n + 1, CFG.backoff, lambda: 0.0) >= 675


def test_unreachable_relay_backs_off_exponentially_but_never_fails_the_message():
    # Every attempt against a relay that is down: the wait doubles with each
    # one (answered or not), max-fails is never reached, max-time still ends it.
    waits = []
    for tries in range(6):
        msg = Claimed("id1", "s@x.org", ("a@x.org",), b"raw", tries, NOW - 60, 0)
        outcome, rcpts = policy.decide(UNREACHABLE, msg, CFG, NOW, rand=lambda: 0.5)
        assert outcome.status is Status.DEFERRED and not outcome.counted
        assert rcpts[0].status == "deferred"
        waits.append(outcome.due_at - NOW)
    assert waits == [33.75, 60, 120, 240, 480, 787.5]  # rand 0.5: the middle of each jittered range
    late = Claimed("id1", "s@x.org", ("a@x.org",), b"raw", 40, NOW - 3600, 0)
    assert policy.decide(UNREACHABLE, late, CFG, NOW)[0].status is Status.EXPIRED


def test_answered_attempts_still_count_with_unanswered_ones_in_between():
    # A store that keeps both counts: 7 attempts so far, only 2 of them answered.
    @dataclasses.dataclass(frozen=True)
    class Counted(Claimed):
        fails: int = 0

    msg = Counted("id1", "s@x.org", ("a@x.org",), b"raw", 7, NOW, 0, fails=1)
    outcome, _ = policy.decide(TEMP, msg, CFG, NOW, rand=lambda: 0.5)
    assert outcome.status is Status.DEFERRED and outcome.counted
    assert outcome.due_at - NOW == 787.5  # the wait follows all 8 attempts (at max, mid-jitter)
    msg = Counted("id1", "s@x.org", ("a@x.org",), b"raw", 7, NOW, 0, fails=2)
    assert policy.decide(TEMP, msg, CFG, NOW)[0].status is Status.FAILED
    assert policy.decide(UNREACHABLE, msg, CFG, NOW)[0].status is Status.DEFERRED


def test_hang_up_at_data_counts_and_fails_with_the_reason():
    outcome, _ = policy.decide(HUNG_UP, claimed(attempts=0), CFG, NOW)
    assert outcome.status is Status.DEFERRED and outcome.counted
    outcome, _ = policy.decide(HUNG_UP, claimed(attempts=2), CFG, NOW)
    assert outcome.status is Status.FAILED
    assert outcome.reason == "max-fails (3) reached: relay closed the connection during DATA, 3 times"
    # A connection refused, or lost before MAIL, does not count.
    assert not policy.decide(DROPPED, claimed(attempts=2), CFG, NOW)[0].counted
    assert policy.decide(DROPPED, claimed(attempts=2), CFG, NOW)[0].status is Status.DEFERRED


def test_delivered():
    outcome, rcpts = policy.decide(SENT, claimed(), CFG, NOW)
    assert outcome.status is Status.SENT and outcome.reason is None
    assert not outcome.counted  # `fails` counts failed attempts only
    assert [(r.address, r.status, r.code) for r in rcpts] == [("a@x.org", "sent", 250)]


def test_temporary_defers_with_backoff_and_reason():
    outcome, rcpts = policy.decide(TEMP, claimed(attempts=0), CFG, NOW, rand=lambda: 0.0)
    assert outcome.status is Status.DEFERRED and outcome.reason == "451 4.3.0 later" and outcome.code == 451
    assert outcome.due_at == NOW + 30 and rcpts[0].status == "deferred"
    jittered = policy.decide(TEMP, claimed(attempts=0), CFG, NOW, rand=lambda: 1.0)[0]
    assert jittered.due_at == NOW + 37.5  # the first retry is spread too
    assert policy.decide(DROPPED, claimed(), CFG, NOW)[0].reason == "connection lost during DATA"


def test_permanent_fails_at_once_with_reason():
    outcome, _ = policy.decide(PERM, claimed(), CFG, NOW)
    assert outcome.status is Status.FAILED and outcome.code == 550 and "5.1.1 unknown" in outcome.reason


def test_max_fails():
    assert policy.decide(TEMP, claimed(attempts=1), CFG, NOW)[0].status is Status.DEFERRED
    outcome, _ = policy.decide(TEMP, claimed(attempts=2), CFG, NOW)
    assert outcome.status is Status.FAILED and outcome.reason.startswith("max-fails (3) reached: 451")


def test_max_time():
    sent_at = NOW - 3600
    assert policy.is_expired(NOW, sent_at, CFG) and not policy.is_expired(NOW - 1, sent_at, CFG)
    outcome, _ = policy.decide(TEMP, claimed(send_after=sent_at), CFG, NOW)
    assert outcome.status is Status.EXPIRED and "max-time" in outcome.reason
    # A retry is never scheduled past the deadline: it lands on it, and expires there.
    near = policy.decide(TEMP, claimed(send_after=NOW - 3590), CFG, NOW, rand=lambda: 1.0)[0]
    assert near.status is Status.DEFERRED and near.due_at == NOW + 10
    assert "max-time" in policy.expired_outcome(CFG).reason


def test_partial_delivery_retries_only_the_temporarily_refused():
    mixed = result("sent", 250, "250 ok",
                   ("ok@x.org", "sent", 250, "250 ok"),
                   ("gone@x.org", "permanent", 550, "550 gone"),
                   ("busy@x.org", "temporary", 452, "452 mailbox full"))
    outcome, rcpts = policy.decide(mixed, claimed(rcpt=("ok@x.org", "gone@x.org", "busy@x.org")), CFG, NOW)
    assert outcome.status is Status.DEFERRED and outcome.pending == ("busy@x.org",)
    assert "delivered to 1 of 3" in outcome.reason and "gone@x.org: 550 gone" in outcome.reason
    assert {r.address: r.status for r in rcpts} == {"ok@x.org": "sent", "gone@x.org": "failed",
                                                     "busy@x.org": "deferred"}
    only_permanent = result("sent", 250, "250 ok", ("ok@x.org", "sent", 250, "250 ok"),
                            ("gone@x.org", "permanent", 550, "550 gone"))
    outcome, _ = policy.decide(only_permanent, claimed(rcpt=("ok@x.org", "gone@x.org")), CFG, NOW)
    assert outcome.status is Status.SENT and "gone@x.org: 550 gone" in outcome.reason


def test_no_recipient_accepted_mixed_refusals_defers_the_temporary_ones():
    none_ok = result("permanent", 550, "550 gone", ("gone@x.org", "permanent", 550, "550 gone"),
                     ("busy@x.org", "temporary", 451, "451 later"))
    outcome, _ = policy.decide(none_ok, claimed(rcpt=("gone@x.org", "busy@x.org")), CFG, NOW)
    assert outcome.status is Status.DEFERRED and outcome.pending == ("busy@x.org",)


AUTO = ServerConfig(max_fails=3, max_time=3600)  # the documented defaults: backoff auto


def test_the_documented_default_is_auto_spreading_three_attempts_over_the_hour():
    assert AUTO.backoff == "auto"
    assert policy.auto_offsets(3, 3600) == [900, 2700]  # +15 min and +45 min after the first attempt
    assert policy.auto_offsets(5, 3600) == [180, 540, 1260, 2700]
    assert policy.auto_offsets(2, 7200) == [5400]


@pytest.mark.parametrize("rand", [0.0, 0.5, 1.0])
def test_auto_retries_a_greylisted_message_at_about_15_then_45_minutes(rand):
    first = claimed(0)
    outcome, _ = policy.decide(TEMP, first, AUTO, NOW, rand=lambda: rand)
    assert outcome.status is Status.DEFERRED and outcome.counted
    assert outcome.due_at - NOW == pytest.approx(900 * (0.9 + 0.2 * rand))
    second = claimed(1)
    t2 = NOW + 900
    outcome, _ = policy.decide(TEMP, second, AUTO, t2, rand=lambda: rand)
    assert outcome.due_at - t2 == pytest.approx(1800 * (0.9 + 0.2 * rand))  # +45 min after the first, about
    outcome, _ = policy.decide(TEMP, claimed(2), AUTO, NOW + 2700, rand=lambda: rand)
    assert outcome.status is Status.FAILED  # the third answered attempt was the last


def test_auto_waits_short_when_the_relay_was_not_reached_and_keeps_the_schedule():
    waits = []
    for tries in range(8):
        msg = Claimed("id1", "s@x.org", ("a@x.org",), b"raw", tries, NOW - 60, 0, fails=0)
        outcome, _ = policy.decide(UNREACHABLE, msg, AUTO, NOW, rand=lambda: 0.5)
        assert outcome.status is Status.DEFERRED and not outcome.counted
        waits.append(outcome.due_at - NOW)
    assert waits[0] == pytest.approx(33.75) and waits == sorted(waits) and max(waits) <= 900
    # After an outage, the first answered refusal still waits the schedule's first gap.
    msg = Claimed("id1", "s@x.org", ("a@x.org",), b"raw", 7, NOW - 60, 0, fails=0)
    assert policy.decide(TEMP, msg, AUTO, NOW, rand=lambda: 0.5)[0].due_at - NOW == pytest.approx(900)


def test_no_retry_is_due_at_once_even_with_a_zero_minimum():
    cfg = ServerConfig(max_fails=10, max_time=3600, backoff=BackoffConfig(min=0, max=0.5))
    outcome, _ = policy.decide(TEMP, claimed(0), cfg, NOW, rand=lambda: 0.0)
    assert outcome.due_at - NOW == policy.RETRY_FLOOR
