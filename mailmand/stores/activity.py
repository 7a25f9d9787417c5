"""What the dashboard's overview reads beyond `counts` and `stats`: mail per
time step, and each relay's last reply. A part of `SQLStore`, kept apart as
events.py and operator.py are; every read walks an index or a bounded window,
never the whole store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .base import Store
from .model import FINISHED, EventType, RelayReply
from .rollup import HOUR


def _steps(since: float, until: float, step: float) -> int:
    return max(0, math.ceil((until - since) / step))


class ActivitySQL(Store):
    """A part of SQLStore, which supplies `_read` (a Store, as EventLog is: its methods
    come before the contract's in any order of SQLStore's bases)."""

    # The whole number of steps from `?` to column {0} (never negative here): SQLite's
    # CAST truncates, which is floor for these; PostgreSQL's rounds, hence floor() there.
    STEP_OF = "CAST(({0} - ?) / ? AS INTEGER)"

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def activity(self, since: float, until: float, step: float) -> dict[str, list[int]]:
        n = _steps(since, until, step)
        out = {name: [0] * n for name in ("created", *(s.value for s in FINISHED))}
        if not n:
            return out
        created = self.STEP_OF.format("created_at")
        # An index-only range of ix_created_id.
        for i, count in self._read(f"SELECT {created}, count(*) FROM messages WHERE created_at >= ?"
                                   " AND created_at < ? GROUP BY 1", (since, step, since, until)):
            if 0 <= int(i) < n:
                out["created"][int(i)] += int(count)
        finished = self.STEP_OF.format("finished_at")
        # A range of ix_finished (the status from each row: the mail of one window).
        for i, status, count in self._read(
                f"SELECT {finished}, status, count(*) FROM messages WHERE finished_at >= ? AND finished_at < ?"
                " GROUP BY 1, 2", (since, step, since, until)):
            if 0 <= int(i) < n and status in out:
                out[status][int(i)] += int(count)
        return out

    def finished_hourly(self, since: float, until: float) -> dict[str, list[int]]:
        first, last = int(since // HOUR), math.ceil(until / HOUR)
        out = {name: [0] * (last - first) for name in ("sent", "failed", "expired")}
        for hour, kind, count in self._read(
                "SELECT hour, kind, sum(n) FROM stats_hourly WHERE hour >= ? AND hour < ?"
                " AND kind IN ('done.sent', 'done.failed', 'done.expired') GROUP BY hour, kind", (first, last)):
            out[kind[5:]][int(hour) - first] += int(count)
        return out

    def last_replies(self, window: int = 1000) -> list[RelayReply]:
        rows = self._read(
            "SELECT e.relay, e.type, e.message_id, e.code, e.reply, e.at FROM (SELECT relay, type, message_id, code,"
            " reply, at, txid, seq FROM events ORDER BY txid DESC, seq DESC LIMIT ?) e WHERE e.relay IS NOT NULL"
            " ORDER BY e.txid DESC, e.seq DESC", (window,))
        latest: dict[str, RelayReply] = {}
        for relay, type, message, code, reply, at in rows:
            if relay not in latest:
                latest[relay] = RelayReply(relay, EventType(type), message, code, reply, float(at))
        return list(latest.values())
