"""The event log, tags and the webhooks' places in it: the SQL both engines share
(a part of `SQLStore`, kept apart so that sql.py stays about messages).

Writing: `record_events` (and `record_event` for one message) put events in the
caller's transaction, the one that makes the state change they describe. That
is the whole outbox: a crash loses both or neither.

Reading: the log is walked in (txid, seq) order, and only up to its horizon, a
position no transaction still running can write below. On SQLite writers take
turns, so that is the last event committed. On PostgreSQL a sequence number is
taken before commit, so a transaction that took 10 may commit after one that
took 11: ordered by the writing transaction's id first, and read only below the
oldest transaction still running (`pg_snapshot_xmin`), the log never grows
behind a reader. Per message the order is that of its state changes: a
transaction that changes a message holds its row until it commits, and one
that waits for that row to change it again takes its id later.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from .base import Store
from .model import Event, EventType, Finished, HookClaim, NewEvent, Position, RecipientOutcome, Status
from .schema import Db

EVENT_ROW = (("id", "text"), ("message_id", "text"), ("type", "text"), ("at", "float8"), ("attempt", "int"),
             ("relay", "text"), ("code", "int"), ("reply", "text"), ("recipients", "text"))
EVENT_COLUMNS = ("e.txid, e.seq, e.id, e.type, e.message_id, m.tags, e.recipients, e.relay, e.code, e.reply,"
                 " e.attempt, e.at")
EXPORT_EVENT = ("id", "type", "at", "attempt", "relay", "code", "reply", "recipients")
TAG_ROW = (("message_id", "text"), ("key", "text"), ("value", "text"))
LAST: Position = (2**63 - 1, 2**63 - 1)  # past every event (BIGINT's largest)
# What each recipient of a message reads in an event that gives none of its own.
RECIPIENT_STATUS = {EventType.QUEUED: "queued", EventType.DEFERRED: "deferred", EventType.SENT: "sent",
                    EventType.RELEASED: "queued", EventType.HELD: "held", EventType.SUPPRESSED: "suppressed",
                    EventType.CANCELLED: "cancelled"}


def tags_json(tags: Mapping[str, str] | None) -> str | None:
    return json.dumps(dict(sorted(tags.items())), ensure_ascii=False) if tags else None


def tags_of(text: str | None) -> dict[str, str]:
    return json.loads(text) if text else {}


def _recipients_json(recipients: Sequence[RecipientOutcome]) -> str:
    # As a webhook sends them: the engine puts this text into the event's JSON as it is.
    return json.dumps([r.__dict__ for r in recipients], ensure_ascii=False)


def _recipients(text: str) -> tuple[RecipientOutcome, ...]:
    return tuple(RecipientOutcome(**r) for r in json.loads(text))


def _marks(n: int) -> str:
    return ",".join("?" * n)


def each(addresses: Sequence[str], type: EventType, code: int | None = None,
         reply: str = "") -> tuple[RecipientOutcome, ...]:
    """Every recipient with the message's own outcome (failed, for a final one that is not `sent`)."""
    status = RECIPIENT_STATUS.get(type, "failed")
    return tuple(RecipientOutcome(a, status, code, reply) for a in addresses)


def finished_event(f: Finished, attempts: int) -> NewEvent:
    """The event of an outcome that applied; `attempts`: the message's, this one included."""
    o, a = f.outcome, f.attempt
    type = EventType(o.status.value)
    if f.recipients:
        final = o.status in (Status.FAILED, Status.EXPIRED, Status.CANCELLED)
        # As the store records them: at a final state no recipient is left `deferred`.
        recipients = tuple(RecipientOutcome(r.address, "failed", r.code, r.reply)
                           if final and r.status == "deferred" else r for r in f.recipients)
    else:
        recipients = each(f.rcpt_to, type, a.code, o.reason or a.reply)
    return NewEvent(f.id, type, a.at, attempts, recipients, a.relay, a.code, a.reply)


def _event(row: Sequence[Any]) -> Event:
    return Event(id=row[2], type=EventType(row[3]), message=row[4], tags=tags_of(row[5]),
                 recipients=_recipients(row[6]), relay=row[7], code=row[8], reply=row[9], attempt=row[10],
                 at=row[11], position=(int(row[0]), int(row[1])))


class EventLog(Store):
    # The horizon: the last position of the log no running transaction can still
    # write at or below. SQLite: its last event (one writer at a time).
    HORIZON = "SELECT 0, coalesce(max(seq), 0) FROM events"
    LOG_ORDER = "e.txid{0}, e.seq{0}"  # the log's order ({0}: "" or " DESC"), down ix_events_log
    # An event as Event.to_json gives it, made by the database (a webhook's batch is then
    # these texts joined: no decoding and encoding per event in the daemon). Its `at` to
    # the microsecond, as `to_json` rounds it.
    EVENT_JSON = ("json_object('id', e.id, 'type', e.type, 'message', e.message_id, 'tags',"
                  " json(coalesce(m.tags, '{}')), 'recipients', json(e.recipients), 'relay', e.relay, 'code', e.code,"
                  " 'reply', e.reply, 'attempt', e.attempt, 'at', json(printf('%.6f', e.at)))")

    def _log_range(self, after: Position, upto: Position) -> tuple[str, list[Any]]:
        """The events of table `e` past `after`, up to `upto` (a row comparison: one index range)."""
        return "(e.txid, e.seq) > (?, ?) AND (e.txid, e.seq) <= (?, ?)", [*after, *upto]

    # What an engine supplies (sql.py's SQLStore, then each engine).
    def tx(self, durable: bool = True) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _insert_rows(self, db: Db, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]],
                     conflict: str = "") -> None:
        raise NotImplementedError

    # -- writing, inside the caller's transaction ------------------------------------

    def record_events(self, db: Db, events: Sequence[NewEvent]) -> None:
        """Write `events` in the transaction `db`, the one that makes the state changes
        they describe. Each gets its id here, once, for good."""
        self._insert_rows(db, "events", EVENT_ROW, [
            (uuid.uuid4().hex, e.message, e.type.value, e.at, e.attempt, e.relay, e.code, e.reply,
             _recipients_json(e.recipients)) for e in events])

    def record_event(self, db: Db, message_id: str, type: EventType, at: float, *, reply: str | None = None,
                     code: int | None = None, relay: str | None = None,
                     recipients: Sequence[RecipientOutcome] | None = None) -> None:
        """Write one message's event in the transaction `db` that changes its state (an
        operator's action: cancel, retry, hold, release, a suppression). Its attempt count
        and, unless given, its recipients (those not yet delivered to, each with the
        message's new state) are read from the message's row as the transaction sees it."""
        row = db.execute("SELECT attempts, coalesce(pending_rcpt, rcpt_to) FROM messages WHERE id = ?",
                         (message_id,)).fetchone()
        if row is None:
            return
        if recipients is None:
            recipients = each(json.loads(row[1]), type, code, reply or "")
        self.record_events(db, [NewEvent(message_id, type, at, row[0], recipients, relay, code, reply)])

    def _tag_rows(self, db: Db, rows: Sequence[tuple[str, Mapping[str, str] | None]]) -> None:
        """A row per (message, key, value), for selection by tag."""
        self._insert_rows(db, "tags", TAG_ROW, [(m, k, v) for m, tags in rows for k, v in (tags or {}).items()])

    # -- reading ---------------------------------------------------------------------

    def _horizon(self) -> Position:
        row = self._read(self.HORIZON)[0]
        return int(row[0]), int(row[1])

    def events(self, *, after: Position | None = None, message_id: str | None = None,
               types: Sequence[EventType] = (), tags: Mapping[str, str] | None = None, since: float | None = None,
               limit: int = 100) -> tuple[list[Event], Position]:
        rows, upto = self._select(EVENT_COLUMNS, after, message_id, types, tags, since, limit)
        found = [_event(r) for r in rows]
        return (found[::-1] if after is None else found), upto

    def events_json(self, after: Position, types: Sequence[EventType] = (),
                    limit: int = 100) -> tuple[list[tuple[float, str]], Position]:
        rows, upto = self._select(f"e.txid, e.seq, e.at, {self.EVENT_JSON}", after, None, types, None, None, limit)
        return [(float(r[2]), str(r[3])) for r in rows], upto

    def _select(self, columns: str, after: Position | None, message_id: str | None, types: Sequence[EventType],
                tags: Mapping[str, str] | None, since: float | None, limit: int) -> tuple[list[Any], Position]:
        """`columns` of the events `events` describes, each row starting (txid, seq), and the position to go on from."""
        horizon = self._horizon()  # first: whatever lies below it is committed before the read begins
        where: list[str] = []
        args: list[Any] = []
        if after is not None:  # following: only below the horizon (the last `limit` are every one committed)
            sql, more = self._log_range(after, horizon)
            where.append(sql)
            args += more
        if message_id is not None:
            where.append("e.message_id = ?")
            args.append(message_id)
        if types:
            where.append(f"e.type IN ({_marks(len(types))})")
            args += [EventType(t).value for t in types]
        if since is not None:
            where.append("e.at >= ?")
            args.append(since)
        for key, value in (tags or {}).items():
            where.append("e.message_id IN (SELECT message_id FROM tags WHERE key = ? AND value = ?)")
            args += [key, value]
        order = "" if after is not None else " DESC"
        rows = self._read(f"SELECT {columns} FROM events e LEFT JOIN messages m ON m.id = e.message_id"
                          f" WHERE {' AND '.join(where) or 'TRUE'} ORDER BY {self.LOG_ORDER.format(order)} LIMIT ?",
                          [*args, limit])
        if after is None:
            return rows, horizon
        if len(rows) == limit:
            return rows, (int(rows[-1][0]), int(rows[-1][1]))
        return rows, max(horizon, after)

    # -- webhooks ----------------------------------------------------------------------

    def webhook_register(self, url: str) -> None:
        end = self._horizon()  # read before: what commits after it is sent
        with self.tx() as db:
            db.execute("INSERT INTO webhooks (url, after_txid, after_seq) VALUES (?, ?, ?)"
                       " ON CONFLICT (url) DO NOTHING", (url, *end))

    def webhook_claim(self, url: str, owner: str, now: float, lease: float) -> HookClaim | None:
        # A lease lost to a power cut is only a lease to take again: not durable.
        with self.tx(durable=False) as db:
            row = db.execute(
                "UPDATE webhooks SET claims = claims + CASE WHEN lease_owner = ? THEN 0 ELSE 1 END,"
                " lease_owner = ?, lease_until = ?"
                " WHERE url = ? AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)"
                " RETURNING claims, after_txid, after_seq, fails, retry_at",
                (owner, owner, now + lease, url, owner, now)).fetchone()
        if row is None:
            return None
        return HookClaim(int(row[0]), (int(row[1]), int(row[2])), int(row[3]), float(row[4]))

    def webhook_done(self, url: str, owner: str, token: int, upto: Position) -> bool:
        # Not durable either: a mark lost to a power cut sends its events again (at least
        # once, and each with its id); the next durable commit makes it durable.
        with self.tx(durable=False) as db:
            return bool(db.execute(
                "UPDATE webhooks SET after_txid = ?, after_seq = ?, fails = 0, retry_at = 0"
                " WHERE url = ? AND lease_owner = ? AND claims = ?", (*upto, url, owner, token)).rowcount)

    def webhook_failed(self, url: str, owner: str, token: int, retry_at: float) -> bool:
        with self.tx(durable=False) as db:
            return bool(db.execute("UPDATE webhooks SET fails = fails + 1, retry_at = ?"
                                   " WHERE url = ? AND lease_owner = ? AND claims = ?",
                                   (retry_at, url, owner, token)).rowcount)

    def webhook_release(self, url: str, owner: str) -> None:
        with self.tx(durable=False) as db:
            db.execute("UPDATE webhooks SET lease_owner = NULL, lease_until = NULL WHERE url = ? AND lease_owner = ?",
                       (url, owner))

    def _hand_back_webhooks(self, predecessor: str | None) -> None:
        """A dead daemon's webhook leases (every one: None), free at once (`take_over`)."""
        with self.tx(durable=False) as db:
            db.execute("UPDATE webhooks SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?"
                       if predecessor else "UPDATE webhooks SET lease_owner = NULL, lease_until = NULL",
                       (predecessor,) if predecessor else ())

    def webhook_pending(self, url: str, types: Sequence[EventType] = (), limit: int | None = None) -> int:
        rows = self._read("SELECT after_txid, after_seq FROM webhooks WHERE url = ?", (url,))
        if not rows:
            return 0
        after, args = self._log_range((int(rows[0][0]), int(rows[0][1])), LAST)
        sql = f"SELECT 1 FROM events e WHERE {after}"
        if types:
            sql += f" AND e.type IN ({_marks(len(types))})"
            args += [EventType(t).value for t in types]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return int(self._read(f"SELECT count(*) FROM ({sql}) AS pending", args)[0][0])
