"""`mailmand explain ID`: where a message is, why, and when it will move, in one paragraph.

Two steps: `gather` reads the stored facts (the message, its attempts and
recipients, the suppressions of its recipients, the queue in front of it)
into a `Facts`; `describe` builds the sentence and the same facts as fields
from that alone (pure: no store, no clock). `explain` does both, for the
command line and the HTTP API alike.

Times are local, as `show` prints them: the hour alone today, with
"tomorrow" or "yesterday" next to today, else with the date.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from .config.values import format_duration, format_rate
from .errors import NotFound
from .stores.base import Store
from .stores.model import Attempt, MessageInfo, RecipientOutcome, Status, Suppression
from .stores.suppression import EVERY_ONE, normal

if TYPE_CHECKING:
    from .config import Config, ServerConfig

QUARANTINE_LOOK = 500  # the newest quarantine entries looked through for a message not stored


@dataclass(frozen=True)
class Facts:
    """What `describe` reads: everything stored about a message that says where it is."""

    now: float
    message: MessageInfo
    attempts: Sequence[Attempt]
    recipients: Sequence[RecipientOutcome]
    suppressions: Sequence[Suppression]  # of its recipients, in force or not
    ahead: int | None  # messages a claim takes before it (when it is due now)
    relay: str  # the relay it goes to
    rate: float | None  # that relay's ceiling, messages a second
    max_fails: int
    max_time: float


@dataclass(frozen=True)
class Explanation:
    id: str
    state: str  # held | cancelled | sent | failed | expired | sending | scheduled | deferred | waiting | quarantined
    text: str
    facts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "text": self.text, **self.facts}


def explain(store: Store, settings: Config | ServerConfig, message_id: str, now: float | None = None) -> Explanation:
    """The message's explanation; one the store does not hold but the quarantine does
    says so. Raises NotFound when neither knows it."""
    t = time.time() if now is None else now
    try:
        return describe(gather(store, settings, message_id, t))
    except NotFound:
        found = quarantined(store, message_id, t)
        if found is None:
            raise
        return found


def gather(store: Store, settings: Config | ServerConfig, message_id: str, now: float) -> Facts:
    server = cast("ServerConfig", getattr(settings, "server", settings))
    info = store.get(message_id)
    due = info.status in (Status.QUEUED, Status.DEFERRED) and info.due_at <= now and info.send_after <= now
    return Facts(now=now, message=info, attempts=store.attempts(message_id),
                 recipients=store.recipients(message_id),
                 suppressions=store.suppressions(now, info.rcpt_to) if info.rcpt_to else [],
                 ahead=store.ahead(message_id, now) if due else None,
                 relay=_first_relay(server), rate=server.smtp.rate, max_fails=server.max_fails,
                 max_time=server.max_time)


def _first_relay(server: ServerConfig) -> str:
    """The relay mail goes to first: its name (`relays`), or host:port (`smtp`)."""
    first = min(server.relay_configs(), key=lambda r: r.priority or 0)
    return first.label


def describe(f: Facts) -> Explanation:
    m, now = f.message, f.now
    last = f.attempts[-1] if f.attempts else None
    deadline = m.send_after + m.paused + f.max_time
    facts: dict[str, Any] = {
        "status": m.status.value, "relay": last.relay if last else f.relay, "attempts": m.attempts,
        "fails": m.fails, "max_fails": f.max_fails, "max_time": f.max_time, "send_after": m.send_after,
        "last_reply": last.reply if last else None, "last_code": last.code if last else None,
        "last_at": last.at if last else None, "suppressed": _suppressed(f)}
    answered = _answer(last, now) if last else ""
    if m.status is Status.HELD:
        state = "held"
        text = (f"held by the operator since {clock(m.held_at or m.updated_at, now)}; "
                f"`mailmand release {m.id}` sends it again")
        facts["held_since"] = m.held_at
    elif m.status is Status.CANCELLED:
        state, text = "cancelled", f"cancelled by the operator at {clock(m.finished_at or m.updated_at, now)}"
    elif m.status is Status.SENT:
        state = "sent"
        text = f"sent: {answered}" if last else f"sent at {clock(m.finished_at or m.updated_at, now)}"
        text += f" (attempt {m.attempts})" if m.attempts > 1 else ""
        text += _undelivered(f)
    elif m.status is Status.FAILED:
        state, text = "failed", _failed(f, last, answered)
    elif m.status is Status.EXPIRED:
        state = "expired"
        text = (f"expired at {clock(m.finished_at or deadline, now)}: max-time ({format_duration(f.max_time)}) "
                f"passed since its send time {clock(m.send_after, now)}")
        text += f"; last: {answered}" if last else ""
        text += f"; not retried (`mailmand retry {m.id}` tries again)"
    elif m.status is Status.SENDING:
        state = "sending"
        text = f"being sent now (attempt {m.fails + 1} of {f.max_fails}) to relay {f.relay}"
    elif m.send_after > now:
        state, text = "scheduled", f"scheduled for {clock(m.send_after, now)}"
    elif m.due_at > now:
        state = "deferred"
        text = (f"deferred: {answered}; next try at about {clock(m.due_at, now)} "
                f"(attempt {m.fails + 1} of {f.max_fails}); expires at {clock(deadline, now)} "
                f"(max-time {format_duration(f.max_time)})") if last else f"deferred until {clock(m.due_at, now)}"
        facts.update(next_try=m.due_at, attempt=m.fails + 1, expires_at=deadline)
    else:
        state, text = "waiting", _waiting(f)
        if last:
            text = f"due again after {answered}; {text}"
        facts.update(ahead=f.ahead, rate=f.rate, wait=_wait(f), expires_at=deadline)
    if m.status in (Status.QUEUED, Status.DEFERRED, Status.HELD, Status.SENDING):
        text += _undelivered(f)
    return Explanation(m.id, state, text, facts)


def quarantined(store: Store, message_id: str, now: float) -> Explanation | None:
    """A queue item kept in quarantine that carries this id, as an explanation."""
    needle = json.dumps(message_id).encode()
    for q in store.quarantined(QUARANTINE_LOOK):
        if needle in q.data:
            text = (f"quarantined at {clock(q.at, now)}: it could not be ingested ({q.reason}); "
                    f"`mailmand quarantine show {q.id}` shows it, `mailmand quarantine release {q.id}` "
                    "stores it once it passes")
            return Explanation(message_id, "quarantined", text,
                               {"status": "quarantined", "entry": q.id, "reason": q.reason, "at": q.at})
    return None


# -- the parts of a sentence ------------------------------------------------------------


def clock(t: float, now: float) -> str:
    """A local time as a reader near `now` wants it: 10:02, 09:00 tomorrow, 2026-12-24 18:00."""
    at, today = datetime.fromtimestamp(t), datetime.fromtimestamp(now).date()
    hour = at.strftime("%H:%M")
    if at.date() == today:
        return hour
    if at.date() == today + timedelta(days=1):
        return f"{hour} tomorrow"
    if at.date() == today - timedelta(days=1):
        return f"{hour} yesterday"
    return at.strftime("%Y-%m-%d %H:%M")


def about(seconds: float) -> str:
    """A wait, rounded as a person says it: about 7 s, about 90 s, about 15 min, about 3 h."""
    if seconds < 10:
        return f"about {max(1, round(seconds))} s"
    if seconds < 120:
        return f"about {round(seconds, -1):.0f} s"
    if seconds < 7200:
        return f"about {round(seconds / 60)} min"
    return f"about {round(seconds / 3600)} h"


def _answer(a: Attempt, now: float) -> str:
    """What the relay said to an attempt, and when: `relay R answered 451 4.7.1 greylisted at 10:02`."""
    if a.code is None:
        return f"relay {a.relay} could not be reached ({a.reply}) at {clock(a.at, now)}"
    return f"relay {a.relay} answered {a.reply} at {clock(a.at, now)}"


def _failed(f: Facts, last: Attempt | None, answered: str) -> str:
    m = f.message
    reason = m.last_error or ""
    if reason.startswith(EVERY_ONE):
        return f"failed: {_suppressed_text(f, everyone=True)}"
    if reason.startswith("max-fails"):
        said = f"{last.reply} at {clock(last.at, f.now)}" if last else reason
        return (f"failed: {said}; max-fails reached ({m.fails} of {f.max_fails} attempts); "
                f"not retried (`mailmand retry {m.id}` tries again)")
    if last is None:
        return f"failed: {reason or 'no reason recorded'} at {clock(m.finished_at or m.updated_at, f.now)}"
    said = last.reply if last.code is not None else f"{reason or last.reply}"
    return f"failed: {said} at {clock(last.at, f.now)}; not retried (permanent)" + _undelivered(f, skip_failed=True)


def _waiting(f: Facts) -> str:
    ahead = f.ahead or 0
    if ahead == 0:
        return f"due now and first in line at relay {f.relay}: it goes out with the next dispatch"
    where = f"waiting behind {ahead:,} message{'s' if ahead != 1 else ''} at relay {f.relay}"
    if f.rate:
        return f"{where}'s {format_rate(f.rate)}: {about(ahead / f.rate)}"
    return f"{where} (no rate limit set: as fast as the relay takes them)"


def _wait(f: Facts) -> float | None:
    return (f.ahead or 0) / f.rate if f.rate else None


def _active(f: Facts) -> list[Suppression]:
    return [s for s in f.suppressions if s.active(f.now)]


def _suppressed(f: Facts) -> list[dict[str, Any]]:
    mine = {normal(r.address) for r in f.recipients if r.status == "suppressed"}
    return [s.to_json() for s in f.suppressions if s.address in mine or s.active(f.now)]


def _suppressed_text(f: Facts, everyone: bool = False) -> str:
    shown = "; ".join(f"{r.address} ({r.reply})" for r in f.recipients if r.status == "suppressed")
    head = "every recipient is suppressed, never offered to a relay" if everyone else "suppressed"
    return f"{head}: {shown}" if shown else head


def _undelivered(f: Facts, skip_failed: bool = False) -> str:
    """The recipients this message will not reach, for a message that goes on or went to the others."""
    parts = []
    for r in f.recipients:
        if r.status == "suppressed":
            parts.append(f"{r.address} ({r.reply})")
        elif r.status == "failed" and not skip_failed:
            parts.append(f"{r.address} failed: {r.reply} (permanent)")
    return f"; not to {', '.join(parts)}" if parts else ""
