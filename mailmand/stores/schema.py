"""The SQL stores' schema: one numbering for every engine, one migration loop.

Version N is the first N migrations applied, and it means the same tables,
columns and indexes on SQLite and on PostgreSQL. A migration is the
statements both engines accept, written once here with the few words the
dialects spell differently in braces ({real}, {blob}, ...; each engine's
`WORDS`), then that engine's own statements for the same version (`OWN`: the
status counters and the hourly roll-ups, which SQLite updates in place and
PostgreSQL appends as deltas). Every statement of the first version says
`IF NOT EXISTS`: SQLite stores made before there were versions have its
tables already.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..errors import StoreError

log = logging.getLogger(__name__)


class Db(Protocol):
    """What an SQL store's `tx()` yields: sqlite3's connection or a psycopg cursor, `?` parameters."""

    def execute(self, sql: str, args: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...


V1 = [
    """CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,
        pending_rcpt TEXT,
        subject TEXT NOT NULL DEFAULT '',
        priority {bigint} NOT NULL DEFAULT 0,
        size {bigint} NOT NULL,
        idempotency_key TEXT,
        created_at {real} NOT NULL,
        send_after {real} NOT NULL,
        due_at {real} NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_code INTEGER,
        last_error TEXT,
        lease_owner TEXT,
        lease_until {real},
        updated_at {real} NOT NULL,
        finished_at {real}
    )""",
    # rcpt_to: a JSON list, every envelope recipient; pending_rcpt: those left to
    # try after a partial delivery. send_after: the time asked for; due_at: the next try.
    # Bodies apart, so listing and counting never read them.
    "CREATE TABLE IF NOT EXISTS bodies (id TEXT PRIMARY KEY, raw {blob} NOT NULL)",
    """CREATE TABLE IF NOT EXISTS attempts (
        message_id TEXT NOT NULL, at {real} NOT NULL, relay TEXT NOT NULL, code INTEGER,
        reply TEXT NOT NULL, duration {real} NOT NULL, outcome TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS recipients (
        message_id TEXT NOT NULL, address TEXT NOT NULL, status TEXT NOT NULL,
        code INTEGER, reply TEXT NOT NULL, updated_at {real} NOT NULL,
        PRIMARY KEY (message_id, address))""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id {serial_key}, at {real} NOT NULL, reason TEXT NOT NULL, data {blob} NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS depth_hourly (hour {bigint} PRIMARY KEY, depth {bigint} NOT NULL)",
    # The claim walks this index in order and stops at `batch` rows.
    "CREATE INDEX IF NOT EXISTS ix_due ON messages (priority DESC, due_at) WHERE status IN ('queued', 'deferred')",
    # min(due_at) of the waiting rows (status, next send) is one step down this one.
    "CREATE INDEX IF NOT EXISTS ix_waiting_due ON messages (due_at) WHERE status IN ('queued', 'deferred')",
    "CREATE INDEX IF NOT EXISTS ix_lease ON messages (lease_until) WHERE status = 'sending'",
    "CREATE INDEX IF NOT EXISTS ix_finished ON messages (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS ix_status_created ON messages (status, created_at)",
    "CREATE INDEX IF NOT EXISTS ix_created ON messages (created_at)",
    "CREATE INDEX IF NOT EXISTS ix_attempts ON attempts (message_id)",
]
V2 = [
    # The lease token, for the fenced finish; `attempts` now counts every attempt
    # (as `show` lists them) and `fails` what counts toward max-fails.
    "ALTER TABLE messages ADD COLUMN claims {bigint} NOT NULL DEFAULT 0",
    "ALTER TABLE messages ADD COLUMN fails INTEGER NOT NULL DEFAULT 0",
    "UPDATE messages SET fails = attempts, attempts = (SELECT count(*) FROM attempts WHERE message_id = messages.id)",
    "ALTER TABLE attempts ADD COLUMN daemon TEXT",
    """CREATE TABLE daemons (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
        version TEXT NOT NULL, started_at {real} NOT NULL, heartbeat_at {real} NOT NULL, spool TEXT NOT NULL)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO meta VALUES ('store_id', {random_id})",  # made by the database: one per store
]
V3 = [
    # The claim an attempt answered: a finish committed once (a COMMIT whose answer
    # the network lost, then tried again) is never applied twice.
    "ALTER TABLE attempts ADD COLUMN claim INTEGER",
    "CREATE UNIQUE INDEX ix_attempt_claim ON attempts (message_id, claim) WHERE claim IS NOT NULL",
]
V4 = [
    # Finished messages by hour and final state, a roll-up (`stats` read them from
    # the rows, seconds on a million), filled from the rows there are.
    "INSERT INTO stats_hourly (hour, kind, bucket, n) SELECT {hour_of_finished}, 'done.' || status, 0, count(*)"
    " FROM messages WHERE finished_at IS NOT NULL AND status IN ('sent', 'failed', 'expired') GROUP BY 1, 2",
]
V5 = [
    # Hold and release: when a message was held, and the seconds it spent held
    # before (its max-time deadline moves on by as much).
    "ALTER TABLE messages ADD COLUMN held_at {real}",
    "ALTER TABLE messages ADD COLUMN paused {real} NOT NULL DEFAULT 0",
    # Where a quarantined item came from (the queue and its entry).
    "ALTER TABLE quarantine ADD COLUMN source TEXT NOT NULL DEFAULT ''",
    # Listings page newest first by (created_at, id), with or without a status:
    # the id in the index orders messages made in the same instant, and a page
    # goes on from the last row's key without OFFSET.
    "DROP INDEX ix_status_created",
    "DROP INDEX ix_created",
    "CREATE INDEX ix_status_created_id ON messages (status, created_at, id)",
    "CREATE INDEX ix_created_id ON messages (created_at, id)",
]
V6 = [
    # Events: every change of a message's state, written in the transaction that makes
    # it (the outbox inside the store). `id` is the event's name forever; `seq` is never
    # given twice ({event_key}); `txid` is the writing transaction ({txid}: PostgreSQL's
    # id, 0 on SQLite, whose writers take turns). Readers walk (txid, seq) only up to the
    # oldest transaction still running, so an event committed late is never passed over.
    """CREATE TABLE events (
        seq {event_key}, id TEXT NOT NULL UNIQUE, txid {bigint} NOT NULL DEFAULT {txid},
        message_id TEXT NOT NULL, type TEXT NOT NULL, at {real} NOT NULL, attempt INTEGER NOT NULL,
        relay TEXT, code INTEGER, reply TEXT, recipients TEXT NOT NULL)""",
    "CREATE INDEX ix_events_log ON events (txid, seq)",
    "CREATE INDEX ix_events_message ON events (message_id)",
    # Tags: a JSON object on the message (what `show` prints, events carry), and a row
    # per pair, so that `--tag k=v` is an index lookup.
    "ALTER TABLE messages ADD COLUMN tags TEXT",
    """CREATE TABLE tags (message_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (message_id, key))""",
    "CREATE INDEX ix_tags ON tags (key, value)",
    # Each webhook's place in the log (`after_*`: acknowledged up to there), under a
    # lease (owner, end, token), as messages are: one daemon at a time sends its events.
    """CREATE TABLE webhooks (
        url TEXT PRIMARY KEY, after_txid {bigint} NOT NULL, after_seq {bigint} NOT NULL,
        lease_owner TEXT, lease_until {real}, claims {bigint} NOT NULL DEFAULT 0,
        fails INTEGER NOT NULL DEFAULT 0, retry_at {real} NOT NULL DEFAULT 0)""",
]
V7 = [
    # Each daemon's relays as it last saw them (a JSON list, written with its heartbeat):
    # up or down and since when, the last reply, the throttle. What `status` shows.
    "ALTER TABLE daemons ADD COLUMN relays TEXT",
    # Messages handed to each relay per UTC day (`quota: {per-day}`), shared by the
    # daemons and kept across restarts.
    """CREATE TABLE relay_quota (relay TEXT NOT NULL, day {bigint} NOT NULL, used {bigint} NOT NULL,
        PRIMARY KEY (relay, day))""",
]
V8 = [
    # Suppression: an address the relays refused as unknown (5.1.x), counted per address.
    # Suppressed while `suppressed_until` is ahead; NULL: refused fewer times than `after`.
    # `source`: relay (counted refusals) or operator (`mailmand suppress add`).
    """CREATE TABLE suppressions (
        address TEXT PRIMARY KEY, refusals INTEGER NOT NULL DEFAULT 0, code INTEGER, reply TEXT NOT NULL,
        first_at {real} NOT NULL, last_at {real} NOT NULL, suppressed_until {real}, source TEXT NOT NULL)""",
    "CREATE INDEX ix_suppressed_until ON suppressions (suppressed_until) WHERE suppressed_until IS NOT NULL",
]
SHARED = [V1, V2, V3, V4, V5, V6, V7, V8]
# The columns a store copies (`migrate`) and reads back, by table, as the latest version has them.
MESSAGE_COLUMNS = ("id", "status", "mail_from", "rcpt_to", "pending_rcpt", "subject", "priority", "size",
                   "idempotency_key", "created_at", "send_after", "due_at", "attempts", "fails", "last_code",
                   "last_error", "updated_at", "finished_at", "held_at", "paused", "tags")
ATTEMPT_COLUMNS = ("at", "relay", "code", "reply", "duration", "outcome", "daemon")
RECIPIENT_COLUMNS = ("address", "status", "code", "reply", "updated_at")
LATEST = len(SHARED)


def statements(version: int, words: Mapping[str, str], own: Mapping[int, Sequence[str]]) -> list[str]:
    """Migration `version` (1-based) as one engine runs it."""
    return [stmt.format(**words) for stmt in SHARED[version - 1]] + list(own.get(version, ()))


def version(db: Db) -> int:
    """The store's schema version: 0 for a store made before there were versions."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0) if row else 0


def upgrade(db: Db, name: str, words: Mapping[str, str], own: Mapping[int, Sequence[str]]) -> list[int]:
    """Bring the store to LATEST in the caller's transaction (all or nothing).
    Returns the versions applied; refuses a store newer than this mailmand."""
    have = version(db)
    if have > LATEST:
        raise StoreError(f"{name} has schema version {have}; this mailmand knows up to {LATEST}: "
                         "upgrade mailmand")
    applied = []
    for v in range(have + 1, LATEST + 1):
        for stmt in statements(v, words, own):
            db.execute(stmt)
        db.execute("INSERT INTO schema_version VALUES (?)", (v,))
        applied.append(v)
    if applied:
        log.info("%s: schema migrated to version %d", name, LATEST)
    return applied
