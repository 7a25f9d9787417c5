"""Retry, backoff and expiry decisions: pure functions of a result and the settings."""

from __future__ import annotations

import random
from collections.abc import Callable

from .config import BackoffConfig, ServerConfig
from .smtp import RecipientResult, SendResult
from .stores.base import Claimed, Outcome, RecipientOutcome, Status

RECIPIENT_STATUS = {"sent": "sent", "temporary": "deferred", "permanent": "failed"}


def backoff(attempt: int, cfg: BackoffConfig, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based):
    exponential from `min`, capped at `max`, with jitter so that a relay's
    outage does not bring every deferred message back in the same second."""
    ceiling = min(cfg.max, cfg.min * 2.0 ** max(0, attempt - 1))
    return max(cfg.min, ceiling * (0.5 + rand() / 2.0))


def deadline(send_after: float, cfg: ServerConfig) -> float:
    return send_after + cfg.max_time


def is_expired(now: float, send_after: float, cfg: ServerConfig) -> bool:
    return now >= deadline(send_after, cfg)


def expired_outcome(cfg: ServerConfig) -> Outcome:
    return Outcome(Status.EXPIRED, reason=f"expired: max-time ({cfg.max_time:g}s) passed since its send time",
                   counted=False)


def decide(result: SendResult, msg: Claimed, cfg: ServerConfig, now: float,
           rand: Callable[[], float] = random.random) -> tuple[Outcome, list[RecipientOutcome]]:
    """The message's new status after `result`, and each recipient's outcome."""
    recipients = [RecipientOutcome(r.address, RECIPIENT_STATUS[r.kind], r.code, r.reply)
                  for r in result.recipients]
    temporary = result.retry_recipients
    refused = [r for r in result.recipients if r.kind != "sent"]
    reason = _reason(result, refused)

    if result.kind == "sent" and not temporary:
        # Delivered to every recipient the relay accepted; permanent refusals are recorded per recipient.
        return Outcome(Status.SENT, reason=reason, code=result.code), recipients
    if result.kind == "permanent" and not temporary:
        return Outcome(Status.FAILED, reason=reason, code=result.code), recipients

    # Only what the relay said about this message counts toward max-fails;
    # an unreachable relay, TLS or AUTH trouble (no reply code at all) is
    # bounded by max-time instead, so an outage does not fail the queue.
    counted = result.code is not None or any(r.code is not None for r in result.recipients)
    attempts = msg.fails + (1 if counted else 0)  # max-fails counts only what the relay answered
    code = result.code if result.kind != "sent" else (refused[0].code if refused else result.code)
    if counted and attempts >= cfg.max_fails:
        return Outcome(Status.FAILED, reason=f"max-fails ({cfg.max_fails}) reached: {reason}",
                       code=code), recipients
    if is_expired(now, msg.send_after, cfg):
        return Outcome(Status.EXPIRED, reason=f"max-time passed: {reason}", code=code,
                       counted=counted), recipients
    due = min(now + backoff(attempts, cfg.backoff, rand), deadline(msg.send_after, cfg))
    # Only the temporarily refused recipients are tried again; with no
    # per-recipient replies (the connection failed) all of them are.
    return Outcome(Status.DEFERRED, reason=reason, code=code, due_at=due,
                   pending=temporary or None, counted=counted), recipients


def _reason(result: SendResult, refused: list[RecipientResult]) -> str | None:
    if result.kind == "sent" and not refused:
        return None
    if result.kind == "sent":
        detail = "; ".join(f"{r.address}: {r.reply}" for r in refused)
        return f"delivered to {len(result.recipients) - len(refused)} of {len(result.recipients)}; {detail}"
    return result.reply  # the relay's reply, code included, or what went wrong
