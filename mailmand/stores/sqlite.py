"""The SQLite store: one WAL file, safe for one daemon and many readers.

SQLite-only tricks live here: RETURNING on the claim, partial indexes, and
status counts kept by triggers so `status` never counts a million rows.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..message import Record

from ..errors import InvalidState, NotFound, StoreError
from .base import (
    FINISHED,
    WAITING,
    Attempt,
    Claimed,
    Finished,
    MessageInfo,
    Outcome,
    Quarantined,
    RecipientOutcome,
    Status,
    Store,
)

HOUR = 3600
LATENCY_BASE = 1.2  # latency histogram buckets grow by 20%: percentiles within ~10%

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,           -- JSON list, every envelope recipient
        pending_rcpt TEXT,               -- JSON list left to try after a partial delivery
        subject TEXT NOT NULL DEFAULT '',
        priority INTEGER NOT NULL DEFAULT 0,
        size INTEGER NOT NULL,
        idempotency_key TEXT,
        created_at REAL NOT NULL,
        send_after REAL NOT NULL,        -- the time asked for
        due_at REAL NOT NULL,            -- the next attempt
        attempts INTEGER NOT NULL DEFAULT 0,
        last_code INTEGER,
        last_error TEXT,
        lease_owner TEXT,
        lease_until REAL,
        updated_at REAL NOT NULL,
        finished_at REAL
    )""",
    # Bodies apart, so listing and counting never read them.
    "CREATE TABLE IF NOT EXISTS bodies (id TEXT PRIMARY KEY, raw BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS attempts (
        message_id TEXT NOT NULL, at REAL NOT NULL, relay TEXT NOT NULL, code INTEGER,
        reply TEXT NOT NULL, duration REAL NOT NULL, outcome TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS recipients (
        message_id TEXT NOT NULL, address TEXT NOT NULL, status TEXT NOT NULL,
        code INTEGER, reply TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (message_id, address))""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, reason TEXT NOT NULL, data BLOB NOT NULL)""",
    # Hourly roll-ups written with each outcome, so `stats` reads a few
    # hundred rows whatever the store's size.
    """CREATE TABLE IF NOT EXISTS stats_hourly (
        hour INTEGER NOT NULL, kind TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (hour, kind, bucket))""",
    """CREATE TABLE IF NOT EXISTS reasons_hourly (
        hour INTEGER NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, reason))""",
    "CREATE TABLE IF NOT EXISTS depth_hourly (hour INTEGER PRIMARY KEY, depth INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS status_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    # The claim walks this index in order and stops at `batch` rows.
    """CREATE INDEX IF NOT EXISTS ix_due ON messages (priority DESC, due_at)
        WHERE status IN ('queued', 'deferred')""",
    # min(due_at) of the waiting rows (status, next send) is one step down this one.
    """CREATE INDEX IF NOT EXISTS ix_waiting_due ON messages (due_at)
        WHERE status IN ('queued', 'deferred')""",
    "CREATE INDEX IF NOT EXISTS ix_lease ON messages (lease_until) WHERE status = 'sending'",
    "CREATE INDEX IF NOT EXISTS ix_finished ON messages (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS ix_status_created ON messages (status, created_at)",
    "CREATE INDEX IF NOT EXISTS ix_created ON messages (created_at)",
    "CREATE INDEX IF NOT EXISTS ix_attempts ON attempts (message_id)",
    """CREATE TRIGGER IF NOT EXISTS count_ins AFTER INSERT ON messages BEGIN
        UPDATE status_counts SET n = n + 1 WHERE status = NEW.status; END""",
    """CREATE TRIGGER IF NOT EXISTS count_upd AFTER UPDATE OF status ON messages
        WHEN OLD.status <> NEW.status BEGIN
        UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
        UPDATE status_counts SET n = n + 1 WHERE status = NEW.status; END""",
    """CREATE TRIGGER IF NOT EXISTS count_del AFTER DELETE ON messages BEGIN
        UPDATE status_counts SET n = n - 1 WHERE status = OLD.status; END""",
]

# Fresh attempts; recipients already delivered to are not sent to again.
REQUEUE = ("UPDATE messages SET status = 'queued', attempts = 0, due_at = ?, send_after = ?,"
           " pending_rcpt = (SELECT nullif(json_group_array(address), '[]') FROM recipients"
           "   WHERE message_id = messages.id AND status <> 'sent'),"
           " updated_at = ?, finished_at = NULL")

INFO_COLUMNS = ("id, status, mail_from, rcpt_to, subject, priority, size, created_at, send_after, "
                "due_at, attempts, last_code, last_error, updated_at, finished_at, idempotency_key")


def _subject(raw: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    try:
        # Split the head with compat32 (plain strings), then decode only the
        # Subject with the modern policy: parsing every header into objects
        # was half of ingest's time, for one value.
        head_msg = BytesHeaderParser(policy=policy.compat32).parsebytes(head)
        value = next((v for k, v in head_msg.raw_items() if k.lower() == "subject"), None)
        return "" if value is None else str(policy.default.header_fetch_parse("Subject", value))
    except Exception:  # a header the parser chokes on must not stop ingest
        return ""


def _info(row: sqlite3.Row) -> MessageInfo:
    return MessageInfo(
        id=row[0], status=Status(row[1]), mail_from=row[2], rcpt_to=tuple(json.loads(row[3])),
        subject=row[4], priority=row[5], size=row[6], created_at=row[7], send_after=row[8],
        due_at=row[9], attempts=row[10], last_code=row[11], last_error=row[12],
        updated_at=row[13], finished_at=row[14], idempotency_key=row[15],
    )


def _bucket(seconds: float) -> int:
    return int(math.log(max(seconds * 1000.0, 1.0), LATENCY_BASE))


def _bucket_value(bucket: int) -> float:
    return LATENCY_BASE ** (bucket + 0.5) / 1000.0


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE) in tx().
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an outcome once recorded is never lost
            self._lock = threading.RLock()
            with self.tx() as db:
                for stmt in SCHEMA:
                    db.execute(stmt)
                db.executemany("INSERT OR IGNORE INTO status_counts VALUES (?, 0)",
                               [(s.value,) for s in Status])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once so it never dead-ends on upgrade."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- ingest ----------------------------------------------------------------

    def insert(self, records: Sequence[Record]) -> int:
        new = 0
        with self.tx() as db:
            for r in records:
                due = max(r.send_after, r.created_at)
                cur = db.execute(
                    "INSERT INTO messages (id, status, mail_from, rcpt_to, subject, priority, size,"
                    " idempotency_key, created_at, send_after, due_at, updated_at)"
                    " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (r.id, r.mail_from, json.dumps(list(r.rcpt_to)),
                     _subject(r.raw) if r.subject is None else r.subject, r.priority,
                     len(r.raw), r.idempotency_key, r.created_at, due, due, r.created_at),
                )
                if cur.rowcount:
                    new += 1
                    db.execute("INSERT INTO bodies (id, raw) VALUES (?, ?)", (r.id, r.raw))
        return new

    # -- dispatch --------------------------------------------------------------

    def claim(self, now: float, limit: int, owner: str, lease: float) -> list[Claimed]:
        with self.tx() as db:
            rows = db.execute(
                "UPDATE messages SET status = 'sending', lease_owner = ?, lease_until = ?, updated_at = ?"
                " WHERE id IN (SELECT id FROM messages INDEXED BY ix_due"  # else: every waiting row, sorted
                "   WHERE status IN ('queued', 'deferred')"
                "   AND due_at <= ? ORDER BY priority DESC, due_at LIMIT ?)"
                " RETURNING id, mail_from, coalesce(pending_rcpt, rcpt_to), attempts, send_after,"
                " priority, due_at",
                (owner, now + lease, now, now, limit),
            ).fetchall()
            if not rows:
                return []
            marks = ",".join("?" * len(rows))
            raws = dict(db.execute(f"SELECT id, raw FROM bodies WHERE id IN ({marks})",
                                   [r[0] for r in rows]).fetchall())
        rows.sort(key=lambda r: (-r[5], r[6]))  # RETURNING order is unspecified
        return [Claimed(id=r[0], mail_from=r[1], rcpt_to=tuple(json.loads(r[2])), raw=raws[r[0]],
                        attempts=r[3], send_after=r[4], priority=r[5]) for r in rows]

    def finish(self, message_id: str, owner: str, attempt: Attempt, outcome: Outcome,
               recipients: Sequence[RecipientOutcome] = ()) -> bool:
        return self.finish_many([(message_id, owner, attempt, outcome, recipients)])[0]

    def finish_many(self, outcomes: Sequence[Finished]) -> list[bool]:
        """`finish` for several messages in one transaction: one fsync for the
        group instead of one each, which is what bounds a fast relay. All or
        nothing; durable on return, like `finish`."""
        rollup: Counter[tuple[int, str, int]] = Counter()
        reasons: Counter[tuple[int, str]] = Counter()
        with self.tx() as db:
            db.executemany("INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?)", [
                (mid, a.at, a.relay, a.code, a.reply, a.duration, a.outcome) for mid, _, a, _, _ in outcomes])
            db.executemany(
                "INSERT INTO recipients VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (message_id, address)"
                " DO UPDATE SET status = excluded.status, code = excluded.code, reply = excluded.reply,"
                " updated_at = excluded.updated_at",
                [(mid, r.address, r.status, r.code, r.reply, a.at) for mid, _, a, _, rs in outcomes for r in rs],
            )
            # Which leases are still ours (and each one's send time, for the
            # latency roll-up): one read, inside the write transaction.
            marks = ",".join("?" * len(outcomes))
            leased = {mid: (owner, sent) for mid, owner, sent in db.execute(
                f"SELECT id, lease_owner, send_after FROM messages WHERE id IN ({marks}) AND status = 'sending'",
                [mid for mid, *_ in outcomes])}
            held = [leased.get(mid, (None,))[0] == owner for mid, owner, *_ in outcomes]
            db.executemany(
                "UPDATE messages SET status = ?, attempts = attempts + ?, last_code = ?, last_error = ?,"
                " due_at = coalesce(?, due_at), pending_rcpt = coalesce(?, pending_rcpt),"
                " lease_owner = NULL, lease_until = NULL, updated_at = ?, finished_at = ? WHERE id = ?",
                [(o.status.value, 1 if o.counted else 0, o.code, o.reason, o.due_at,
                  json.dumps(list(o.pending)) if o.pending else None, a.at,
                  a.at if o.status in FINISHED else None, mid)
                 for (mid, _, a, o, _), ok in zip(outcomes, held, strict=True) if ok])
            for (message_id, _, attempt, outcome, _), ok in zip(outcomes, held, strict=True):
                status = outcome.status
                if ok and status in (Status.SENT, Status.FAILED, Status.EXPIRED):
                    hour = int(attempt.at // HOUR)
                    rollup[hour, status.value, 0] += 1
                    if status is Status.SENT:
                        rollup[hour, "latency", _bucket(attempt.at - leased[message_id][1])] += 1
                    elif outcome.reason:
                        reasons[hour, outcome.reason[:200]] += 1
            # The hourly roll-ups, summed over the group: a few upserts, not a few per message.
            db.executemany("INSERT INTO stats_hourly VALUES (?, ?, ?, ?) ON CONFLICT (hour, kind, bucket)"
                           " DO UPDATE SET n = n + excluded.n", [(*k, n) for k, n in rollup.items()])
            db.executemany("INSERT INTO reasons_hourly VALUES (?, ?, ?) ON CONFLICT (hour, reason)"
                           " DO UPDATE SET n = n + excluded.n", [(*k, n) for k, n in reasons.items()])
        return held

    def release(self, owner: str | None, ids: Sequence[str] | None = None, now: float | None = None,
                spare: str | None = None) -> int:
        where: list[str] = ["status = 'sending'"]
        args: list[object] = []
        if spare is not None:
            where.append("lease_owner IS NOT ?")
            args.append(spare)
        if owner is not None:
            where.append("lease_owner = ?")
            args.append(owner)
        if ids is not None:
            if not ids:
                return 0
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        if now is not None:
            where.append("lease_until < ?")
            args.append(now)
        with self.tx() as db:
            cur = db.execute(
                "UPDATE messages SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,"
                f" lease_owner = NULL, lease_until = NULL WHERE {' AND '.join(where)}", args)
            return cur.rowcount

    def next_due(self) -> float | None:
        # INDEXED BY: left to itself the planner picks ix_status_created and
        # reads every waiting row (`status` took 146 ms on a million messages; now 5 ms).
        rows = self._read("SELECT min(due_at) FROM messages INDEXED BY ix_waiting_due"
                          " WHERE status IN ('queued', 'deferred')")
        return rows[0][0]

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
        rows = self._read("SELECT at, relay, code, reply, duration, outcome FROM attempts"
                          " WHERE message_id = ? ORDER BY at", (message_id,))
        return [Attempt(*r) for r in rows]

    def recipients(self, message_id: str) -> list[RecipientOutcome]:
        rows = self._read("SELECT address, status, code, reply FROM recipients"
                          " WHERE message_id = ? ORDER BY address", (message_id,))
        return [RecipientOutcome(*r) for r in rows]

    def list_messages(self, status: Status | None = None, limit: int = 50) -> list[MessageInfo]:
        if status is None:
            rows = self._read(f"SELECT {INFO_COLUMNS} FROM messages ORDER BY created_at DESC LIMIT ?",
                              (limit,))
        else:
            rows = self._read(f"SELECT {INFO_COLUMNS} FROM messages WHERE status = ?"
                              " ORDER BY created_at DESC LIMIT ?", (Status(status).value, limit))
        return [_info(r) for r in rows]

    def counts(self) -> dict[Status, int]:
        got = dict(self._read("SELECT status, n FROM status_counts"))
        return {s: int(got.get(s.value, 0)) for s in Status}

    # -- operator actions --------------------------------------------------------

    def _transition(self, message_id: str, allowed: Sequence[Status], verb: str, sql: str,
                    args: Sequence[Any]) -> None:
        with self.tx() as db:
            row = db.execute("SELECT status FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise NotFound(f"no message with id {message_id!r}")
            if Status(row[0]) not in allowed:
                raise InvalidState(f"cannot {verb} message {message_id}: it is {row[0]} "
                                   f"(only {', '.join(s.value for s in allowed)} can be)")
            db.execute(sql, (*args, message_id))

    def cancel(self, message_id: str, now: float) -> None:
        self._transition(message_id, WAITING, "cancel",
                         "UPDATE messages SET status = 'cancelled', updated_at = ?, finished_at = ?,"
                         " last_error = 'cancelled by operator' WHERE id = ?", (now, now))

    def requeue(self, message_id: str | None, now: float) -> int:
        if message_id is not None:
            self._transition(message_id, (Status.FAILED, Status.EXPIRED), "retry",
                             REQUEUE + " WHERE id = ?", (now, now, now))
            return 1
        with self.tx() as db:
            return db.execute(REQUEUE + " WHERE status IN ('failed', 'expired')",
                              (now, now, now)).rowcount

    def purge(self, before: float) -> int:
        finished = ",".join(f"'{s.value}'" for s in FINISHED)
        with self.tx() as db:
            ids = [r[0] for r in db.execute(
                f"SELECT id FROM messages WHERE finished_at < ? AND status IN ({finished})", (before,))]
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for table, col in (("bodies", "id"), ("attempts", "message_id"),
                                   ("recipients", "message_id"), ("messages", "id")):
                    db.execute(f"DELETE FROM {table} WHERE {col} IN ({marks})", chunk)
            db.execute("DELETE FROM quarantine WHERE at < ?", (before,))
        return len(ids)

    # -- quarantine --------------------------------------------------------------

    def quarantine(self, reason: str, data: bytes, now: float) -> int:
        with self.tx() as db:
            cur = db.execute("INSERT INTO quarantine (at, reason, data) VALUES (?, ?, ?)",
                             (now, reason, data))
            return int(cur.lastrowid or 0)

    def quarantined(self, limit: int = 50) -> list[Quarantined]:
        rows = self._read("SELECT id, at, reason, data FROM quarantine ORDER BY id DESC LIMIT ?", (limit,))
        return [Quarantined(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def quarantine_count(self) -> int:
        return int(self._read("SELECT count(*) FROM quarantine")[0][0])

    # -- statistics --------------------------------------------------------------

    def record_depth(self, now: float) -> None:
        c = self.counts()
        depth = c[Status.QUEUED] + c[Status.DEFERRED] + c[Status.SENDING]
        with self.tx() as db:
            db.execute("INSERT INTO depth_hourly VALUES (?, ?) ON CONFLICT (hour)"
                       " DO UPDATE SET depth = max(depth, excluded.depth)", (int(now // HOUR), depth))

    def stats(self, since: float, now: float) -> dict[str, Any]:
        first = int(since // HOUR)
        rows = self._read("SELECT kind, bucket, sum(n) FROM stats_hourly WHERE hour >= ?"
                          " GROUP BY kind, bucket", (first,))
        totals = {k: 0 for k in ("sent", "failed", "expired")}
        histogram: list[tuple[int, int]] = []
        for kind, bucket, n in rows:
            if kind == "latency":
                histogram.append((bucket, n))
            else:
                totals[kind] = totals.get(kind, 0) + n
        reasons = self._read("SELECT reason, sum(n) AS c FROM reasons_hourly WHERE hour >= ?"
                             " GROUP BY reason ORDER BY c DESC LIMIT 10", (first,))
        depth = self._read("SELECT hour, depth FROM depth_hourly WHERE hour >= ? ORDER BY hour", (first,))
        return {
            "since": since,
            "until": now,
            **totals,
            "latency": _percentiles(sorted(histogram), (50, 95, 99)),
            "top_failures": [{"reason": r, "count": n} for r, n in reasons],
            "depth_hourly": [{"hour": h * HOUR, "depth": d} for h, d in depth],
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _percentiles(histogram: list[tuple[int, int]], wanted: Sequence[int]) -> dict[str, float | None]:
    total = sum(n for _, n in histogram)
    out: dict[str, float | None] = {}
    for p in wanted:
        if not total:
            out[f"p{p}"] = None
            continue
        rank, seen = math.ceil(total * p / 100), 0
        for bucket, n in histogram:
            seen += n
            if seen >= rank:
                out[f"p{p}"] = round(_bucket_value(bucket), 4)
                break
    return out
