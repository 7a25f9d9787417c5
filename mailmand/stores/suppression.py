"""Suppression and the queue in front of a message: the SQL both engines share
(a part of `SQLStore`, kept apart so that sql.py stays about messages).

An address is stored lowercased, so that `Bob@Example.com` and `bob@example.com`
are one address (few systems tell local parts apart by case, and a refusal of
one spelling says as much about the other).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .base import Store
from .events import RECIPIENT_STATUS
from .model import EventType, NewEvent, RecipientOutcome, Refusal, Status, Suppression
from .rollup import HOUR
from .schema import Db

if TYPE_CHECKING:
    from ..message import Record

COLUMNS = "address, refusals, code, reply, first_at, last_at, suppressed_until, source"
CHUNK = 500  # addresses per statement (SQLite allows 32,766 parameters)
ACTIVE = "suppressed_until > ?"
EVERY_ONE = "every recipient is suppressed"


def normal(address: str) -> str:
    return address.strip().lower()


def _suppression(row: Sequence[Any]) -> Suppression:
    return Suppression(row[0], int(row[1]), row[2], row[3], float(row[4]), float(row[5]),
                       None if row[6] is None else float(row[6]), row[7])


class SuppressionSQL(Store):
    # What an engine supplies (sql.py's SQLStore, then each engine).
    def tx(self, durable: bool = True) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def record_events(self, db: Db, events: Sequence[NewEvent]) -> None:
        raise NotImplementedError

    def _insert_rows(self, db: Db, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]],
                     conflict: str = "") -> None:
        raise NotImplementedError

    def _write_rollup_rows(self, db: Db, table: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    # -- the contract ------------------------------------------------------------------

    def note_refusals(self, refusals: Sequence[Refusal], after: int, duration: float) -> list[str]:
        newly = []
        with self.tx() as db:
            for r in refusals:
                until = r.at + duration
                # Counted; suppressed once counted `after` times, never for less long than it already was.
                row = db.execute(
                    f"INSERT INTO suppressions ({COLUMNS}) VALUES (?, 1, ?, ?, ?, ?,"
                    " CASE WHEN 1 >= ? THEN ? ELSE NULL END, 'relay')"
                    " ON CONFLICT (address) DO UPDATE SET refusals = suppressions.refusals + 1,"
                    " code = excluded.code, reply = excluded.reply, last_at = excluded.last_at,"
                    " suppressed_until = CASE WHEN suppressions.refusals + 1 >= ?"
                    "   AND coalesce(suppressions.suppressed_until, 0) < ? THEN ?"
                    "   ELSE suppressions.suppressed_until END,"
                    " source = CASE WHEN suppressions.refusals + 1 >= ?"
                    "   AND coalesce(suppressions.suppressed_until, 0) < ? THEN 'relay' ELSE suppressions.source END"
                    " RETURNING suppressed_until",
                    (normal(r.address), r.code, r.reply, r.at, r.at, after, until,
                     after, until, until, after, until)).fetchone()
                if row is not None and row[0] is not None and float(row[0]) == until:
                    newly.append(normal(r.address))
        return newly

    def suppress(self, address: str, now: float, until: float, reason: str) -> None:
        with self.tx() as db:
            db.execute(f"INSERT INTO suppressions ({COLUMNS}) VALUES (?, 0, NULL, ?, ?, ?, ?, 'operator')"
                       " ON CONFLICT (address) DO UPDATE SET code = NULL, reply = excluded.reply,"
                       " last_at = excluded.last_at, suppressed_until = excluded.suppressed_until,"
                       " source = 'operator'", (normal(address), reason, now, now, until))

    def unsuppress(self, address: str) -> bool:
        with self.tx() as db:
            return bool(db.execute("DELETE FROM suppressions WHERE address = ? RETURNING address",
                                   (normal(address),)).fetchall())

    def suppressions(self, now: float, addresses: Sequence[str] | None = None,
                     limit: int = 1000) -> list[Suppression]:
        if addresses is None:
            rows = self._read(f"SELECT {COLUMNS} FROM suppressions WHERE {ACTIVE} ORDER BY last_at DESC, address"
                              " LIMIT ?", (now, limit))
            return [_suppression(r) for r in rows]
        wanted = sorted({normal(a) for a in addresses})
        found = []
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i:i + CHUNK]
            found += self._read(f"SELECT {COLUMNS} FROM suppressions WHERE address IN ({','.join('?' * len(chunk))})",
                                chunk)
        return sorted((_suppression(r) for r in found), key=lambda s: (-s.last_at, s.address))[:limit]

    def ahead(self, message_id: str, now: float) -> int:
        # Down ix_due, as the claim walks it.
        rows = self._read(
            "SELECT count(*) FROM messages m, messages me WHERE me.id = ?"
            " AND m.status IN ('queued', 'deferred') AND m.due_at <= ? AND m.id <> me.id"
            " AND (m.priority > me.priority OR (m.priority = me.priority AND m.due_at < me.due_at))",
            (message_id, now))
        return int(rows[0][0]) if rows else 0

    # -- at ingest, in the insert's transaction ---------------------------------------------

    def _active(self, db: Db, records: Sequence[Record], now: float) -> dict[str, Suppression]:
        """The suppressions in force among the recipients of `records`, by address: one
        indexed look when none is in force (the common case), then the recipients'."""
        if db.execute(f"SELECT 1 FROM suppressions WHERE {ACTIVE} LIMIT 1", (now,)).fetchone() is None:
            return {}
        wanted = sorted({normal(a) for r in records for a in r.rcpt_to})
        found: dict[str, Suppression] = {}
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i:i + CHUNK]
            for row in db.execute(f"SELECT {COLUMNS} FROM suppressions WHERE {ACTIVE}"
                                  f" AND address IN ({','.join('?' * len(chunk))})", [now, *chunk]).fetchall():
                found[row[0]] = _suppression(row)
        return found

    def _apply_suppressions(self, db: Db, records: Sequence[Record], active: dict[str, Suppression],
                            now: float) -> set[str]:
        """Records just inserted (status queued) whose recipients include suppressed ones:
        those fail for good (their row, a `suppressed` event); a record with none left
        fails whole (and a `failed` event). Returns the ids of those that failed whole."""
        failed: set[str] = set()
        rows: list[tuple[Any, ...]] = []
        events: list[NewEvent] = []
        status = RECIPIENT_STATUS[EventType.SUPPRESSED]
        for r in records:
            out = [(a, active[normal(a)]) for a in r.rcpt_to if normal(a) in active]
            if not out:
                continue
            left = [a for a in r.rcpt_to if normal(a) not in active]
            recipients = tuple(RecipientOutcome(a, status, s.code, s.reason()) for a, s in out)
            rows += [(r.id, x.address, x.status, x.code, x.reply, now) for x in recipients]
            events.append(NewEvent(r.id, EventType.SUPPRESSED, now, 0, recipients, None, out[0][1].code,
                                   out[0][1].reason()))
            if left:
                db.execute("UPDATE messages SET pending_rcpt = ? WHERE id = ?", (json.dumps(left), r.id))
                continue
            reason = f"{EVERY_ONE}: {out[0][1].reason()}" if len(out) == 1 else EVERY_ONE
            db.execute("UPDATE messages SET status = ?, last_code = ?, last_error = ?, updated_at = ?,"
                       " finished_at = ? WHERE id = ?", (Status.FAILED.value, out[0][1].code, reason, now, now, r.id))
            events.append(NewEvent(r.id, EventType.FAILED, now, 0,
                                   tuple(RecipientOutcome(x.address, "failed", x.code, x.reply) for x in recipients),
                                   None, out[0][1].code, reason))
            failed.add(r.id)
        self._insert_rows(db, "recipients", (("message_id", "text"), ("address", "text"), ("status", "text"),
                                             ("code", "int"), ("reply", "text"), ("updated_at", "float8")), rows)
        self.record_events(db, events)
        if failed:
            self._write_rollup_rows(db, "stats_hourly", [(int(now // HOUR), f"done.{Status.FAILED.value}", 0,
                                                          len(failed))])
        return failed
