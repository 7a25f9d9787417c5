"""Retry, backoff and expiry decisions: pure functions of a result and the settings.

Two counts, two jobs:
- every attempt, answered or not, makes the next wait longer (an outage is
  not hammered at `backoff.min` forever);
- only attempts the relay answered about this message count toward
  `max-fails` (an outage must not fail the queue; `max-time` bounds it),
  and so does a connection the relay closed after accepting the envelope
  (a message that makes the relay hang up at DATA must not be tried forever).

Two schedules:
- `backoff: auto` (the default) spreads the `max-fails` attempts over
  `max-time`: the waits after answered attempts double, and the last retry
  comes at AUTO_SPAN of max-time after the first attempt (max-fails 3,
  max-time 1h: about +15 min and +45 min), which is what greylisting asks for.
  An attempt that did not reach the relay waits UNREACHED_FIRST, doubled for
  each such attempt, up to the first gap: an outage does not cost 15 minutes
  a message, and does not spend the schedule;
- `backoff: {min, max}`: `min` doubled for each attempt, up to `max`.

No retry is due sooner than RETRY_FLOOR after the attempt: a message deferred
in a run is never claimed again by the same run (a `flush` is one attempt,
never two, even with `min: 0`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from .config import BackoffConfig, ServerConfig
from .smtp import Kind, RecipientResult, SendResult
from .stores.model import Claimed, Outcome, RecipientOutcome, Status

# RFC 3463 §3.2: the 5.1.x codes say the address itself is wrong ("bad destination
# mailbox address", "... system address", "mailbox has moved") where 5.7.x is policy;
# 5.1.7 and 5.1.8 are about the sender's address, not the recipient's.
ENHANCED = re.compile(r"\d{3}[ -]([245])\.(\d{1,3})\.(\d{1,3})\b")
SENDER_SUBJECTS = ("7", "8")
# A relay that gives no enhanced code: the words of "no such user" that such replies use.
UNKNOWN_WORDS = re.compile(r"no such (user|mailbox|recipient|address)|(user|recipient|mailbox|address) unknown"
                           r"|unknown (user|recipient|mailbox|address)|(user|mailbox|recipient|address)"
                           r" (does not exist|doesn't exist|not found)", re.IGNORECASE)
RECIPIENT_STATUS = {Kind.SENT: "sent", Kind.TEMPORARY: "deferred", Kind.PERMANENT: "failed"}
JITTER = 0.25  # ± this share of the wait: spread enough to part a crowd, small enough to keep doubling
AUTO_JITTER = 0.1  # ± this share of each gap of the auto schedule: "about +15 min" stays about that
AUTO_SPAN = 0.75  # the auto schedule's last retry, as a share of max-time: room left for it to be late
UNREACHED_FIRST = 30.0  # seconds: the auto schedule's first wait after an attempt that did not reach the relay
RETRY_FLOOR = 1.0  # seconds: the least wait after any attempt


def auto_gap(max_fails: int, max_time: float) -> float:
    """The first wait of the auto schedule: the waits g, 2g, 4g ... of the
    max-fails - 1 retries add up to AUTO_SPAN × max-time."""
    retries = max(1, max_fails - 1)
    return AUTO_SPAN * max_time / (2.0 ** retries - 1.0)


def auto_offsets(max_fails: int, max_time: float) -> list[float]:
    """When each retry of the auto schedule comes, in seconds after the first
    attempt, without jitter (the table in docs/configuration.md)."""
    gap = auto_gap(max_fails, max_time)
    return [gap * (2.0 ** k - 1.0) for k in range(1, max_fails)]


def retry_wait(msg: Claimed, counted: bool, cfg: ServerConfig, rand: Callable[[], float] = random.random) -> float:
    """Seconds from this attempt to the next, which is `msg`'s attempt number
    `msg.attempts + 1` (and, when `counted`, its fail number `fails + 1`)."""
    if cfg.backoff == "auto":
        gap = auto_gap(cfg.max_fails, cfg.max_time)
        if counted:
            wait = gap * 2.0 ** max(0, _fails(msg)) * (1.0 + AUTO_JITTER * (2.0 * rand() - 1.0))
        else:
            unreached = max(0, msg.attempts - _fails(msg))  # such attempts before this one
            wait = backoff(unreached + 1, BackoffConfig(min(UNREACHED_FIRST, gap), gap), rand)
    else:
        # Every attempt before this one, answered or not, and this one: the wait keeps growing in an outage.
        wait = backoff(msg.attempts + 1, cfg.backoff, rand)
    return max(RETRY_FLOOR, wait)


def backoff(attempt: int, cfg: BackoffConfig, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after attempt number `attempt` (1-based; every attempt,
    answered or not): `min` doubled for each attempt before it, ±25% jitter
    from the first retry on (so an outage does not bring every deferred
    message back in the same second), always within [min, max]. With the
    jitter at ±25% each wait is still longer than the one before, until `max`."""
    base = min(cfg.max, cfg.min * 2.0 ** min(64, max(0, attempt - 1)))
    low, high = max(cfg.min, base * (1.0 - JITTER)), min(cfg.max, base * (1.0 + JITTER))
    return low + (high - low) * rand()


def deadline(clock: float, cfg: ServerConfig) -> float:
    """When a message whose max-time clock started at `clock` (`Claimed.clock`: its
    send time, moved on by any time it spent held) expires."""
    return clock + cfg.max_time


def is_expired(now: float, clock: float, cfg: ServerConfig) -> bool:
    return now >= deadline(clock, cfg)


def expired_outcome(cfg: ServerConfig) -> Outcome:
    return Outcome(Status.EXPIRED, reason=f"expired: max-time ({cfg.max_time:g}s) passed since its send time",
                   counted=False)


def decide(result: SendResult, msg: Claimed, cfg: ServerConfig, now: float,
           rand: Callable[[], float] = random.random) -> tuple[Outcome, list[RecipientOutcome]]:
    """The message's new status after `result`, and each recipient's outcome."""
    recipients = [RecipientOutcome(r.address, RECIPIENT_STATUS[r.kind], r.code, r.reply)
                  for r in result.recipients]
    temporary = result.retry_recipients
    refused = [r for r in result.recipients if r.kind is not Kind.SENT]
    reason = _reason(result, refused)

    if result.kind is Kind.SENT and not temporary:
        # Delivered to every recipient the relay accepted; permanent refusals are recorded per
        # recipient. Not a failed attempt: `fails` counts those only.
        return Outcome(Status.SENT, reason=reason, code=result.code, counted=False), recipients
    if result.kind is Kind.PERMANENT and not temporary:
        return Outcome(Status.FAILED, reason=reason, code=result.code), recipients

    # Only what the relay said about this message counts toward max-fails
    # (and a hang-up after it accepted the envelope); an unreachable relay,
    # TLS or AUTH trouble (no reply code at all) is bounded by max-time
    # instead, so an outage does not fail the queue.
    # Nor does a relay's own trouble: down, refusing the session, or pushing back for load.
    counted = result.answered and not result.relay_fault
    fails = _fails(msg) + (1 if counted else 0)
    code = result.code if result.kind is not Kind.SENT else (refused[0].code if refused else result.code)
    if counted and fails >= cfg.max_fails:
        if result.lost_in_data:
            reason = f"relay closed the connection during DATA, {fails} times"
        return Outcome(Status.FAILED, reason=f"max-fails ({cfg.max_fails}) reached: {reason}",
                       code=code), recipients
    if is_expired(now, msg.clock, cfg):
        return Outcome(Status.EXPIRED, reason=f"max-time passed: {reason}", code=code,
                       counted=counted), recipients
    due = min(now + retry_wait(msg, counted, cfg, rand), deadline(msg.clock, cfg))
    # Only the temporarily refused recipients are tried again; with no
    # per-recipient replies (the connection failed) all of them are.
    return Outcome(Status.DEFERRED, reason=reason, code=code, due_at=due,
                   pending=temporary or None, counted=counted), recipients


def suppressible(r: RecipientOutcome) -> bool:
    """A recipient refused for good as unknown (5.1.x, or 550/551/553 saying so with no
    enhanced code): what counts toward its suppression. Policy refusals (5.7.x) never do."""
    if r.status != "failed" or r.code is None or not 500 <= r.code < 600:
        return False
    m = ENHANCED.match(r.reply)
    if m:
        return m.group(1) == "5" and m.group(2) == "1" and m.group(3) not in SENDER_SUBJECTS
    return r.code in (550, 551, 553) and UNKNOWN_WORDS.search(r.reply) is not None


def _fails(msg: Claimed) -> int:
    """Attempts before this one that counted toward max-fails. A store that
    keeps both counts gives them as `fails` (answered) and `attempts` (every
    one); one that keeps only the answered ones gives them as `attempts`."""
    fails = getattr(msg, "fails", None)
    return msg.attempts if fails is None else int(fails)


def _reason(result: SendResult, refused: list[RecipientResult]) -> str | None:
    if result.kind is Kind.SENT and not refused:
        return None
    if result.kind is Kind.SENT:
        detail = "; ".join(f"{r.address}: {r.reply}" for r in refused)
        return f"delivered to {len(result.recipients) - len(refused)} of {len(result.recipients)}; {detail}"
    return result.reply  # the relay's reply, code included, or what went wrong
