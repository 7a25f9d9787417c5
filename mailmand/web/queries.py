"""What the dashboard's pages read from the store, in one call each (run in a
worker thread: a store call may wait on a lock). Every part is an index walk,
a bounded window or a roll-up (stores/activity.py, stores/rollup.py): a page
costs the same on a store of a thousand messages or of a million.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..cli.status import relays as relay_states
from ..stores.model import DaemonInfo, RelayReply, Status
from . import charts
from .context import WebContext

HOUR, DAY, MINUTE = 3600.0, 86400.0, 60.0
REPLY_WINDOW = 1000  # events looked back through for each relay's last reply
RAW_SHOWN = 256 * 1024  # bytes of a message's source shown on its page (the rest: the raw link)


@dataclass(frozen=True)
class Relay:
    name: str
    configured: bool  # in email.server.relays (or smtp); others: seen in the events only
    state: dict[str, Any] | None  # as a live daemon's heartbeat reports it (`mailmand status`'s), None: none does
    last: RelayReply | None  # its newest reply among the last REPLY_WINDOW events


@dataclass(frozen=True)
class Overview:
    now: float
    counts: dict[str, int]
    total: int
    backlog: int  # waiting to be sent: queued, deferred, sending
    held: int
    oldest_due: float | None  # due_at of the oldest message due now
    next_due: float | None  # the next send time still to come
    latency: dict[str, float | None]  # p50/p95/p99 of delivered mail, the last day
    day: dict[str, Any]  # `stats` over the last day
    hour_chart: charts.Chart
    day_chart: charts.Chart
    relays: list[Relay]
    daemons: list[DaemonInfo]
    this_daemon: str


def _clock(ts: float, fmt: str) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime(fmt)


def overview(ctx: WebContext) -> Overview:
    store, now = ctx.store, ctx.clock()
    counts = {s.value: n for s, n in store.counts().items()}
    day = store.stats(now - DAY, now)
    # The last hour by the minute, from the rows (index ranges); the day by the hour, from the roll-up.
    start = (now // MINUTE + 1) * MINUTE - HOUR
    minutes = store.activity(start, start + HOUR, MINUTE)
    failed = [f + e for f, e in zip(minutes["failed"], minutes["expired"], strict=True)]
    hour_chart = charts.stacked(
        "Messages per minute, the last hour", {"sent": minutes["sent"], "failed": failed},
        [_clock(start + i * MINUTE, "%H:%M") for i in range(60)], every=10)
    first = (now // HOUR + 1) * HOUR - DAY
    hourly = store.finished_hourly(first, first + DAY)
    per_minute = {"sent": [n / 60 for n in hourly["sent"]],
                  "failed": [(f + e) / 60 for f, e in zip(hourly["failed"], hourly["expired"], strict=True)]}
    day_chart = charts.stacked("Messages per minute, the last day (each hour's mean)", per_minute,
                               [_clock(first + i * HOUR, "%H:00") for i in range(len(hourly["sent"]))], every=4)
    live = store.daemons(now)
    seen = {r.relay: r for r in store.last_replies(REPLY_WINDOW)}
    relays = [Relay(str(r["name"]), True, r if r.get("state") is not None else None,
                    seen.pop(str(r["name"]), None) or seen.pop(str(r.get("relay")), None))
              for r in relay_states(ctx.cfg, store, live, now)]
    relays += [Relay(name, False, None, reply) for name, reply in seen.items()]
    return Overview(
        now=now, counts=counts, total=sum(counts.values()),
        backlog=sum(counts[s.value] for s in (Status.QUEUED, Status.DEFERRED, Status.SENDING)),
        held=counts[Status.HELD.value], oldest_due=store.oldest_due(now),
        next_due=_future(store.next_due(), now), latency=day["latency"], day=day,
        hour_chart=hour_chart, day_chart=day_chart, relays=relays,
        daemons=sorted(live, key=lambda d: d.started_at), this_daemon=ctx.daemon_id)


def _future(ts: float | None, now: float) -> float | None:
    return ts if ts is not None and ts > now else None


@dataclass(frozen=True)
class Source:
    headers: list[tuple[str, str]]  # in their order, unfolded, encoded words decoded
    text: str  # the source, decoded for reading (bytes that are not UTF-8 shown as U+FFFD)
    size: int
    cut: bool  # only the first RAW_SHOWN bytes are in `text`


def source(ctx: WebContext, message_id: str) -> Source:
    """A stored message's headers and source (raises NotFound)."""
    raw = ctx.store.raw(message_id)
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    # Encoded words decoded (the source below shows them as sent); the page escapes the text.
    headers = [(name, " ".join(str(value).split())) for name, value in parsed.items()]
    return Source(headers, raw[:RAW_SHOWN].decode("utf-8", "replace"), len(raw), len(raw) > RAW_SHOWN)

