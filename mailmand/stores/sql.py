"""What the SQL engines share: the statements both dialects accept, written
once with `?` parameters, and the logic around them.

An engine supplies `tx()` (one write transaction; a cursor-like `Db`),
`_read()`, its schema and a few dialect strings below; SQLite and PostgreSQL
then differ only in SQL text and connection setup (huey's `BaseSqlStorage`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..errors import InvalidState, NotFound, RecordRejected
from .activity import ActivitySQL
from .events import EventLog, each, finished_event, tags_json
from .model import (
    DAEMON_TTL,
    FINISHED,
    OPERATOR_MOVES,
    Attempt,
    Claimed,
    DaemonInfo,
    EventType,
    Exported,
    Finished,
    MessageInfo,
    NewEvent,
    Quarantined,
    RecipientOutcome,
    Status,
)
from .operator import INFO_COLUMNS, OperatorSQL
from .operator import info as _info
from .rollup import HOUR, Rollup, report
from .schema import ATTEMPT_COLUMNS, Db
from .suppression import SuppressionSQL, normal

if TYPE_CHECKING:
    from ..message import Record

ATTEMPT_ROW = (("message_id", "text"), ("at", "float8"), ("relay", "text"), ("code", "int"), ("reply", "text"),
               ("duration", "float8"), ("outcome", "text"), ("daemon", "text"), ("claim", "int"))
RECIPIENT_ROW = (("message_id", "text"), ("address", "text"), ("status", "text"), ("code", "int"),
                 ("reply", "text"), ("updated_at", "float8"))
DAEMON_COLUMNS = "id, host, pid, version, started_at, heartbeat_at, spool"
DAEMON_READ = DAEMON_COLUMNS + ", relays"
# A lease handed back: queued if never tried, else deferred (due as it was).
HAND_BACK = ("UPDATE messages SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,"
             " lease_owner = NULL, lease_until = NULL")
# An outcome's new state (the fenced finish adds its WHERE; stores/postgres.py writes it for a group).
FINISH = ("UPDATE messages SET status = ?, attempts = attempts + 1, fails = fails + ?, last_code = ?,"
          " last_error = ?, due_at = coalesce(?, due_at), pending_rcpt = coalesce(?, pending_rcpt),"
          " lease_owner = NULL, lease_until = NULL, updated_at = ?, finished_at = ?")
# A claim's outcome still applies while the message is in flight, or handed back by a
# sweep but not claimed since (the token says that); never once it has finished.
LIVE = "status IN ('sending', 'queued', 'deferred')"
INSERT_CHUNK = 200  # rows per multi-row INSERT (SQLite allows 32,766 parameters)
FINAL = {Status.FAILED, Status.EXPIRED, Status.CANCELLED}
REQUEUED = "retry requested by operator"


def header_subject(raw: bytes) -> str:
    """message.header_subject, imported when first needed (records older than the
    subject field): `mailmand status` and `list` never load the email package."""
    from ..stdemail import header_subject as subject

    return subject(raw)


def _marks(n: int) -> str:
    return ",".join("?" * n)


def cause(exc: BaseException) -> str:
    """An error in one line, for a log or a refusal: its type and the first line of its text."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class SQLStore(OperatorSQL, EventLog, SuppressionSQL, ActivitySQL):
    # Dialect: how each engine spells the few things the two do not share.
    SKIP_LOCKED = ""  # appended to a sub-select that picks rows to change
    LOCK_ROWS = ""  # appended to the fenced finish's read of its leases
    GREATEST = "max"
    JSON_AGG = "nullif(json_group_array(address), '[]')"  # a JSON list of addresses, NULL for none
    WAITING_INDEX = ""  # an index hint for min(due_at)
    # The driver's errors that mean "this record cannot be stored" (not "the store is down").
    RECORD_ERRORS: tuple[type[Exception], ...] = ()

    def tx(self, durable: bool = True) -> AbstractContextManager[Db]:
        """One write transaction. Not `durable`: its commit may be lost to a power
        cut (never to a crash of the daemon), for what is harmless to lose (a claim:
        the mail is simply due again); a later durable commit makes it durable too."""
        raise NotImplementedError

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _due_now(self, db: Db) -> None:
        """Messages became due now (inserted, handed back, re-queued): wake the other daemons."""

    def _write_rollup(self, db: Db, r: Rollup) -> None:
        self._write_rollup_rows(db, "stats_hourly", r.stat_rows())
        self._write_rollup_rows(db, "reasons_hourly", r.reason_rows())

    def _write_rollup_rows(self, db: Db, table: str, rows: Sequence[Sequence[Any]]) -> None:
        """Add counts to an hourly roll-up (stats_hourly or reasons_hourly), summing per key."""
        if table == "stats_hourly":
            db.executemany("INSERT INTO stats_hourly VALUES (?, ?, ?, ?) ON CONFLICT (hour, kind, bucket)"
                           " DO UPDATE SET n = stats_hourly.n + excluded.n", rows)
        else:
            db.executemany("INSERT INTO reasons_hourly VALUES (?, ?, ?) ON CONFLICT (hour, reason)"
                           " DO UPDATE SET n = reasons_hourly.n + excluded.n", rows)

    # -- ingest ----------------------------------------------------------------

    def insert(self, records: Sequence[Record]) -> int:
        try:
            return self._insert(records)
        except self.RECORD_ERRORS as exc:
            raise RecordRejected(cause(exc)) from exc

    def _insert(self, records: Sequence[Record], quarantined: int | None = None) -> int:
        """Insert `records`; with `quarantined`, delete that quarantine entry in the same transaction."""
        new = 0
        due_now = False
        now = time.time()
        with self.tx() as db:
            if quarantined is not None and not db.execute(
                    "DELETE FROM quarantine WHERE id = ? RETURNING id", (quarantined,)).fetchall():
                raise NotFound(f"no quarantine entry {quarantined}")
            active = self._active(db, records, now)  # suppressed recipients: {} when none is in force
            for i in range(0, len(records), INSERT_CHUNK):
                chunk = records[i:i + INSERT_CHUNK]
                args: list[Any] = []
                for r in chunk:
                    due = max(r.send_after, r.created_at)
                    subject = header_subject(r.raw) if r.subject is None else r.subject  # older records lack it
                    args += (r.id, r.mail_from, json.dumps(list(r.rcpt_to)), subject, r.priority,
                             len(r.raw), r.idempotency_key, r.created_at, due, due, r.created_at, tags_json(r.tags))
                rows = db.execute(
                    "INSERT INTO messages (id, status, mail_from, rcpt_to, subject, priority, size,"
                    " idempotency_key, created_at, send_after, due_at, updated_at, tags) VALUES "
                    + ",".join(["(?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                    + " ON CONFLICT (id) DO NOTHING RETURNING id", args).fetchall()
                stored = {row[0] for row in rows}
                if stored:
                    mine = [r for r in chunk if r.id in stored]
                    db.executemany("INSERT INTO bodies (id, raw) VALUES (?, ?)", [(r.id, r.raw) for r in mine])
                    self._tag_rows(db, [(r.id, r.tags) for r in mine if r.tags])
                    self.record_events(db, [NewEvent(r.id, EventType.QUEUED, r.created_at,
                                                     recipients=each(going, EventType.QUEUED)) for r in mine
                                            if (going := [a for a in r.rcpt_to if normal(a) not in active])])
                    if active:
                        self._apply_suppressions(db, mine, active, now)
                    new += len(stored)
                    due_now = due_now or any(r.send_after <= r.created_at for r in chunk if r.id in stored)
            if due_now:
                self._due_now(db)
        return new

    # -- dispatch --------------------------------------------------------------

    def _claimed(self, rows: list[Any], raws: dict[str, bytes]) -> list[Claimed]:
        """Rows of (id, mail_from, rcpt, attempts, fails, send_after, priority, due_at, token, paused)."""
        rows.sort(key=lambda r: (-r[6], r[7]))  # RETURNING order is unspecified
        return [Claimed(id=r[0], mail_from=r[1], rcpt_to=tuple(json.loads(r[2])), raw=bytes(raws[r[0]]),
                        attempts=r[3], send_after=r[5], priority=r[6], fails=r[4], token=r[8], paused=r[9])
                for r in rows]

    def finish(self, outcomes: Sequence[Finished]) -> list[bool]:
        if not outcomes:
            return []
        todo = sorted(outcomes, key=lambda f: f.id)
        ids = [f.id for f in todo]
        r = Rollup()
        with self.tx() as db:
            if self.LOCK_ROWS:  # rows locked in one order by every writer: two finishes never deadlock
                db.execute(f"SELECT id FROM messages WHERE id IN ({_marks(len(ids))}) ORDER BY id{self.LOCK_ROWS}",
                           ids)
            # An outcome whose attempt is on record was committed before (a COMMIT
            # whose answer was lost, then tried again): it is not applied twice.
            recorded = {(mid, claim) for mid, claim in db.execute(
                f"SELECT message_id, claim FROM attempts WHERE message_id IN ({_marks(len(ids))})"
                " AND claim IS NOT NULL", ids).fetchall()}
            again = [f for f in todo if (f.id, f.token) in recorded]
            todo = [f for f in todo if (f.id, f.token) not in recorded]
            # The fence is in the write: the new state applies only where the claim is
            # still the message's latest (whoever swept it since, nobody claimed it).
            mine = {i: (at, n) for i, at, n in self._update_finished(db, [
                (f.outcome.status.value, 1 if f.outcome.counted else 0, f.outcome.code, f.outcome.reason,
                 f.outcome.due_at, json.dumps(list(f.outcome.pending)) if f.outcome.pending else None,
                 f.attempt.at, f.attempt.at if f.outcome.status in FINISHED else None, f.id, f.token)
                for f in todo])}
            held = {f.id: f.id in mine for f in todo}  # mine: id -> (send_after, attempts)
            if again:
                latest = dict(db.execute(f"SELECT id, claims FROM messages WHERE id IN ({_marks(len(again))})",
                                         [f.id for f in again]).fetchall())
                held.update({f.id: latest.get(f.id) == f.token for f in again})
            self._insert_rows(db, "attempts", ATTEMPT_ROW, [
                (f.id, a.at, a.relay, a.code, a.reply, a.duration, a.outcome, f.owner, f.token) for f in todo
                for a in (f.attempt,)])
            # The attempt is history whoever holds the message now; every count follows the attempt rows.
            db.executemany("UPDATE messages SET attempts = attempts + 1 WHERE id = ?",
                           [(f.id,) for f in todo if not held[f.id]])
            done = [f for f in todo if held[f.id]]
            self._insert_rows(db, "recipients", RECIPIENT_ROW, [
                (f.id, x.address, x.status, x.code, x.reply, f.attempt.at) for f in done for x in f.recipients],
                " ON CONFLICT (message_id, address) DO UPDATE SET status = excluded.status, code = excluded.code,"
                " reply = excluded.reply, updated_at = excluded.updated_at")
            final = [(f.attempt.at, f.id) for f in done if f.outcome.status in FINAL]
            if final:  # one state everywhere: a recipient of a finished message is not still `deferred`
                db.executemany("UPDATE recipients SET status = 'failed', updated_at = ?"
                               " WHERE message_id = ? AND status = 'deferred'", final)
            self.record_events(db, [finished_event(f, mine[f.id][1]) for f in done])
            for f in todo:
                r.attempt(f)
            for f in done:
                r.add(f, mine[f.id][0])
            self._write_rollup(db, r)
        return [held[f.id] for f in outcomes]

    def _insert_rows(self, db: Db, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]],
                     conflict: str = "") -> None:
        """INSERT rows of (column, SQL type) `columns` into `table`, with an optional ON CONFLICT clause."""
        names = ", ".join(c for c, _ in columns)
        db.executemany(f"INSERT INTO {table} ({names}) VALUES ({_marks(len(columns))}){conflict}", rows)

    def _update_finished(self, db: Db, rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, float, int]]:
        """Each message's new state, (status, counted, code, reason, due_at, pending, at,
        finished_at, id, token), fenced by the token: only a message whose latest claim
        is still `token`, and that has not finished, changes. Returns (id, send_after,
        attempts) of those."""
        changed: list[tuple[str, float, int]] = []
        for row in rows:
            changed += db.execute(f"{FINISH} WHERE id = ? AND claims = ? AND {LIVE}"
                                  " RETURNING id, send_after, attempts", row).fetchall()
        return changed

    def renew(self, owner: str, ids: Sequence[str], until: float) -> int:
        if not ids:
            return 0
        with self.tx() as db:
            return int(db.execute(f"UPDATE messages SET lease_until = ? WHERE status = 'sending'"
                                  f" AND lease_owner = ? AND id IN ({_marks(len(ids))})",
                                  [until, owner, *ids]).rowcount)

    def _hand_back(self, where: str, args: Sequence[Any]) -> int:
        with self.tx() as db:
            n = int(db.execute(f"{HAND_BACK} WHERE id IN (SELECT id FROM messages WHERE status = 'sending'"
                               f" AND {where}{self.SKIP_LOCKED})", args).rowcount)
            if n:
                self._due_now(db)
        return n

    def release_own(self, owner: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return self._hand_back(f"lease_owner = ? AND id IN ({_marks(len(ids))})", [owner, *ids])

    def sweep_expired(self, now: float, spare: Sequence[str] = ()) -> int:
        if spare:
            return self._hand_back(f"lease_until < ? AND id NOT IN ({_marks(len(spare))})", [now, *spare])
        return self._hand_back("lease_until < ?", [now])

    def take_over(self, predecessor: str | None) -> int:
        if predecessor is None:
            if not self.single_instance:
                raise InvalidState(f"{self.name} is shared: only a known dead daemon's leases can be taken")
            self._hand_back_webhooks(None)
            return self._hand_back("1 = 1", [])
        self._hand_back_webhooks(predecessor)
        return self._hand_back("lease_owner = ?", [predecessor])

    def next_due(self) -> float | None:
        rows = self._read(f"SELECT min(due_at) FROM messages {self.WAITING_INDEX}"
                          " WHERE status IN ('queued', 'deferred')")
        return rows[0][0]

    # -- daemons -----------------------------------------------------------------

    def register(self, daemon: DaemonInfo) -> None:
        with self.tx() as db:
            db.execute(f"INSERT INTO daemons ({DAEMON_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                       " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                       [daemon.id, daemon.host, daemon.pid, daemon.version, daemon.started_at,
                        daemon.heartbeat_at, daemon.spool])

    def heartbeat(self, daemon_id: str, now: float, relays: Sequence[Mapping[str, Any]] | None = None) -> None:
        with self.tx() as db:
            if relays is None:
                db.execute("UPDATE daemons SET heartbeat_at = ? WHERE id = ?", [now, daemon_id])
            else:
                db.execute("UPDATE daemons SET heartbeat_at = ?, relays = ? WHERE id = ?",
                           [now, json.dumps(list(relays), separators=(",", ":")), daemon_id])

    def unregister(self, daemon_id: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM daemons WHERE id = ?", [daemon_id])

    def daemons(self, now: float | None = None) -> list[DaemonInfo]:
        if now is None:
            rows = self._read(f"SELECT {DAEMON_READ} FROM daemons ORDER BY started_at")
        else:
            rows = self._read(f"SELECT {DAEMON_READ} FROM daemons WHERE heartbeat_at >= ?"
                              " ORDER BY started_at", [now - DAEMON_TTL])
        return [DaemonInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(json.loads(r[7])) if r[7] else ())
                for r in rows]

    # -- relay quotas ----------------------------------------------------------

    def quota_reserve(self, relay: str, day: int, want: int, limit: int) -> int:
        if want <= 0:
            return 0
        with self.tx() as db:
            db.execute("INSERT INTO relay_quota VALUES (?, ?, 0) ON CONFLICT (relay, day) DO NOTHING", [relay, day])
            # The row locked (PostgreSQL) or the database (SQLite's one writer) until the commit.
            [(used,)] = db.execute(f"SELECT used FROM relay_quota WHERE relay = ? AND day = ?{self.LOCK_ROWS}",
                                   [relay, day]).fetchall()
            granted = max(0, min(want, limit - int(used)))
            if granted:
                db.execute("UPDATE relay_quota SET used = used + ? WHERE relay = ? AND day = ?",
                           [granted, relay, day])
        return granted

    def quota_release(self, relay: str, day: int, n: int) -> None:
        if n <= 0:
            return
        with self.tx() as db:
            db.execute("UPDATE relay_quota SET used = CASE WHEN used > ? THEN used - ? ELSE 0 END"
                       " WHERE relay = ? AND day = ?", [n, n, relay, day])

    def quota_used(self, relay: str, day: int) -> int:
        rows = self._read("SELECT used FROM relay_quota WHERE relay = ? AND day = ?", [relay, day])
        return int(rows[0][0]) if rows else 0

    # -- reading ---------------------------------------------------------------

    def get(self, message_id: str) -> MessageInfo:
        rows = self._read(f"SELECT {INFO_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise NotFound(f"no message with id {message_id!r}")
        return _info(rows[0])

    def raw(self, message_id: str) -> bytes:
        rows = self._read("SELECT raw FROM bodies WHERE id = ?", (message_id,))
        if not rows:
            raise NotFound(f"no message with id {message_id!r}")
        return bytes(rows[0][0])

    def attempts(self, message_id: str) -> list[Attempt]:
        rows = self._read(f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts WHERE message_id = ? ORDER BY at",
                          (message_id,))
        return [Attempt(*r) for r in rows]

    def recipients(self, message_id: str) -> list[RecipientOutcome]:
        rows = self._read("SELECT address, status, code, reply FROM recipients"
                          " WHERE message_id = ? ORDER BY address", (message_id,))
        return [RecipientOutcome(*r) for r in rows]

    # -- operator actions --------------------------------------------------------

    def _transition(self, message_id: str, allowed: Sequence[Status], verb: str, sql: Sequence[str],
                    args: Sequence[Sequence[Any]], event: EventType, now: float, reply: str) -> None:
        """One operator's action on one message, in a transaction with its event."""
        with self.tx() as db:
            row = db.execute(f"SELECT status FROM messages WHERE id = ?{self.LOCK_ROWS}", (message_id,)).fetchone()
            if row is None:
                raise NotFound(f"no message with id {message_id!r}")
            if Status(row[0]) not in allowed:
                raise InvalidState(f"cannot {verb} message {message_id}: it is {row[0]} "
                                   f"(only {', '.join(s.value for s in allowed)} can be)")
            if verb == "retry":
                self._unfinish(db, "id = ?", (message_id,))
            for stmt, a in zip(sql, args, strict=True):
                db.execute(stmt, (*a, message_id))
            self.record_event(db, message_id, event, now, reply=reply)
            if verb == "retry":
                self._due_now(db)

    def cancel(self, message_id: str, now: float) -> None:
        self._transition(message_id, OPERATOR_MOVES["cancel"], "cancel", (
            "UPDATE messages SET status = 'cancelled', updated_at = ?, finished_at = ?, held_at = NULL,"
            " last_error = 'cancelled by operator' WHERE id = ?",
            "UPDATE recipients SET status = 'cancelled', reply = 'cancelled by operator', updated_at = ?"
            " WHERE status = 'deferred' AND message_id = ?"), ((now, now), (now,)),
            EventType.CANCELLED, now, "cancelled by operator")

    def _unfinish(self, db: Db, where: str, args: Sequence[Any] = ()) -> None:
        """Messages about to leave their final state: out of the finished counts of their hour."""
        rows = db.execute(f"SELECT finished_at, status FROM messages WHERE {where} AND finished_at IS NOT NULL",
                          args).fetchall()
        taken: dict[tuple[int, str, int], int] = {}
        for at, status in rows:
            key = (int(at // HOUR), f"done.{status}", 0)
            taken[key] = taken.get(key, 0) - 1
        self._write_rollup_rows(db, "stats_hourly", sorted((*k, n) for k, n in taken.items()))

    def _requeue_sql(self, where: str) -> list[str]:
        # A fresh max-fails budget; recipients already delivered to are not sent to again.
        return [f"UPDATE recipients SET status = 'deferred', reply = '{REQUEUED}', updated_at = ?"
                f" WHERE status <> 'sent' AND message_id IN (SELECT id FROM messages WHERE {where})",
                "UPDATE messages SET status = 'queued', fails = 0, paused = 0, due_at = ?, send_after = ?,"
                f" pending_rcpt = (SELECT {self.JSON_AGG} FROM recipients"
                "   WHERE message_id = messages.id AND status <> 'sent'),"
                f" updated_at = ?, finished_at = NULL WHERE {where}"]

    def requeue(self, message_id: str | None, now: float) -> int:
        if message_id is not None:
            self._transition(message_id, OPERATOR_MOVES["retry"], "retry",
                             self._requeue_sql("id = ?"), ((now,), (now, now, now)), EventType.QUEUED, now, REQUEUED)
            return 1
        failed = "status IN ('failed', 'expired')"
        with self.tx() as db:
            self._unfinish(db, failed)
            recipients, messages = self._requeue_sql(failed)
            db.execute(recipients, (now,))
            rows = db.execute(f"{messages} RETURNING id, attempts, coalesce(pending_rcpt, rcpt_to)",
                              (now, now, now)).fetchall()
            self.record_events(db, [NewEvent(i, EventType.QUEUED, now, n, each(json.loads(rcpt), EventType.QUEUED,
                                                                                 reply=REQUEUED), reply=REQUEUED)
                                    for i, n, rcpt in rows])
            if rows:
                self._due_now(db)
            return len(rows)

    def flush(self, ids: Sequence[str] | None, now: float) -> int:
        where, args = "status = 'deferred'", [now, now, *(ids or ())]
        if ids is not None:
            if not ids:
                return 0
            where += f" AND id IN ({_marks(len(ids))})"
        with self.tx() as db:
            n = int(db.execute(f"UPDATE messages SET due_at = ?, updated_at = ? WHERE {where}", args).rowcount)
            if n:
                self._due_now(db)  # PostgreSQL: NOTIFY wakes every daemon
        return n

    def purge(self, before: float) -> int:
        finished = ",".join(f"'{s.value}'" for s in FINISHED)
        with self.tx() as db:
            ids = [r[0] for r in db.execute(
                f"SELECT id FROM messages WHERE finished_at < ? AND status IN ({finished})", (before,)).fetchall()]
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                for table, col in (("bodies", "id"), ("attempts", "message_id"), ("recipients", "message_id"),
                                   ("tags", "message_id"), ("events", "message_id"), ("messages", "id")):
                    db.execute(f"DELETE FROM {table} WHERE {col} IN ({_marks(len(chunk))})", chunk)
            db.execute("DELETE FROM quarantine WHERE at < ?", (before,))
            # Refusals counted then, and suppressions ended then: forgotten.
            db.execute("DELETE FROM suppressions WHERE coalesce(suppressed_until, last_at) < ?", (before,))
        return len(ids)

    # -- quarantine --------------------------------------------------------------

    def quarantine(self, reason: str, data: bytes, now: float, source: str = "") -> int:
        with self.tx() as db:
            row = db.execute("INSERT INTO quarantine (at, reason, data, source) VALUES (?, ?, ?, ?) RETURNING id",
                             (now, reason, data, source)).fetchone()
            return int(row[0])

    def quarantined(self, limit: int = 50) -> list[Quarantined]:
        rows = self._read("SELECT id, at, reason, data, source FROM quarantine ORDER BY id DESC LIMIT ?", (limit,))
        return [Quarantined(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def quarantined_entry(self, entry: int) -> Quarantined:
        rows = self._read("SELECT id, at, reason, data, source FROM quarantine WHERE id = ?", (entry,))
        if not rows:
            raise NotFound(f"no quarantine entry {entry}")
        r = rows[0]
        return Quarantined(r[0], r[1], r[2], bytes(r[3]), r[4])

    def unquarantine(self, entry: int, records: Sequence[Record] = ()) -> int:
        try:
            return self._insert(records, quarantined=entry)
        except self.RECORD_ERRORS as exc:
            raise RecordRejected(cause(exc)) from exc

    def quarantine_count(self) -> int:
        return int(self._read("SELECT count(*) FROM quarantine")[0][0])

    # -- statistics --------------------------------------------------------------

    def record_depth(self, now: float) -> None:
        c = self.counts()
        depth = c[Status.QUEUED] + c[Status.DEFERRED] + c[Status.SENDING]
        with self.tx() as db:
            db.execute("INSERT INTO depth_hourly VALUES (?, ?) ON CONFLICT (hour)"
                       f" DO UPDATE SET depth = {self.GREATEST}(depth_hourly.depth, excluded.depth)",
                       (int(now // HOUR), depth))

    def stats(self, since: float, now: float) -> dict[str, Any]:
        first = int(since // HOUR)
        rows = self._read("SELECT kind, bucket, sum(n) FROM stats_hourly WHERE hour >= ? GROUP BY kind, bucket",
                          (first,))
        reasons = self._read("SELECT reason, sum(n) AS c FROM reasons_hourly WHERE hour >= ?"
                             " GROUP BY reason ORDER BY c DESC, reason LIMIT 10", (first,))
        depth = self._read("SELECT hour, depth FROM depth_hourly WHERE hour >= ? ORDER BY hour", (first,))
        return report(since, now, rows, reasons, depth)

    # -- migrate -----------------------------------------------------------------

    def store_id(self) -> str:
        """A random id made with the schema: which store a copy came from."""
        return str(self._read("SELECT value FROM meta WHERE key = 'store_id'")[0][0])

    def export(self, batch: int = 500) -> Iterator[list[Exported]]:
        from .transfer import export  # `migrate` alone copies a store

        return export(self, batch)

    def import_messages(self, messages: Sequence[Exported]) -> list[str]:
        from .transfer import import_messages

        return import_messages(self, messages)
