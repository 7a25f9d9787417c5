"""The retry policy as pure functions: no server, no store, an injected random."""

from __future__ import annotations

import pytest

from mailmand import policy
from mailmand.config import BackoffConfig, ServerConfig
from mailmand.smtp import RecipientResult, SendResult
from mailmand.stores.base import Claimed, Status

CFG = ServerConfig(max_fails=3, max_time=3600, backoff=BackoffConfig(min=30, max=900))
NOW = 1_000_000.0


def claimed(attempts: int = 0, rcpt: tuple[str, ...] = ("a@x.org",), send_after: float = NOW) -> Claimed:
    return Claimed("id1", "s@x.org", rcpt, b"raw", attempts, send_after, 0, fails=attempts)


def result(kind: str, code: int | None, reply: str, *rcpts: tuple[str, str, int | None, str]) -> SendResult:
    recipients = tuple(RecipientResult(a, c, r, k) for a, k, c, r in rcpts)  # type: ignore[arg-type]
    return SendResult("id1", kind, code, reply, recipients, NOW, 0.01, "relay:25")  # type: ignore[arg-type]


SENT = result("sent", 250, "250 ok", ("a@x.org", "sent", 250, "250 ok"))
TEMP = result("temporary", 451, "451 4.3.0 later", ("a@x.org", "temporary", 451, "451 4.3.0 later"))
PERM = result("permanent", 550, "550 5.1.1 unknown", ("a@x.org", "permanent", 550, "550 5.1.1 unknown"))
DROPPED = result("temporary", None, "connection lost during DATA")


@pytest.mark.parametrize("rand", [0.0, 0.5, 1.0])
def test_backoff_grows_exponentially_within_bounds(rand):
    delays = [policy.backoff(n, CFG.backoff, lambda: rand) for n in range(1, 12)]
    assert all(30 <= d <= 900 for d in delays)
    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx(900 * (0.5 + rand / 2))  # capped at max


def test_backoff_jitter_spreads_retries():
    spread = {round(policy.backoff(3, CFG.backoff, lambda r=r: r / 10), 3) for r in range(11)}
    assert len(spread) == 11 and min(spread) >= 30


def test_delivered():
    outcome, rcpts = policy.decide(SENT, claimed(), CFG, NOW)
    assert outcome.status is Status.SENT and outcome.reason is None
    assert [(r.address, r.status, r.code) for r in rcpts] == [("a@x.org", "sent", 250)]


def test_temporary_defers_with_backoff_and_reason():
    outcome, rcpts = policy.decide(TEMP, claimed(attempts=0), CFG, NOW, rand=lambda: 0.0)
    assert outcome.status is Status.DEFERRED and outcome.reason == "451 4.3.0 later" and outcome.code == 451
    assert outcome.due_at == NOW + 30 and rcpts[0].status == "deferred"
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
