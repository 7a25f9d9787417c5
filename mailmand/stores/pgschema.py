"""The PostgreSQL schema, as versioned migrations: version N is MIGRATIONS[:N]
applied, each under the advisory lock (stores/postgres.py). The model is the
SQLite store's; the counters are appended deltas instead of rows updated in place."""

from __future__ import annotations

import uuid

from .base import Status

_COUNT = """CREATE FUNCTION mailmand_count_{op}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_deltas (status, n) SELECT status, sum(n) FROM ({rows}) d GROUP BY status HAVING sum(n) <> 0;
    RETURN NULL;
END $$"""

V1 = [
    """CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,                  -- JSON list, every envelope recipient
        pending_rcpt TEXT,                      -- JSON list left to try after a partial delivery
        subject TEXT NOT NULL DEFAULT '',
        priority BIGINT NOT NULL DEFAULT 0,
        size BIGINT NOT NULL,
        idempotency_key TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        send_after DOUBLE PRECISION NOT NULL,   -- the time asked for
        due_at DOUBLE PRECISION NOT NULL,       -- the next attempt
        attempts INTEGER NOT NULL DEFAULT 0,    -- every attempt on record
        fails INTEGER NOT NULL DEFAULT 0,       -- those that count toward max-fails
        last_code INTEGER,
        last_error TEXT,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION,
        claims BIGINT NOT NULL DEFAULT 0,       -- the lease token: bumped by every claim
        updated_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION
    )""",
    "CREATE TABLE bodies (id TEXT PRIMARY KEY, raw BYTEA NOT NULL)",
    """CREATE TABLE attempts (
        message_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, relay TEXT NOT NULL, code INTEGER,
        reply TEXT NOT NULL, duration DOUBLE PRECISION NOT NULL, outcome TEXT NOT NULL, daemon TEXT)""",
    """CREATE TABLE recipients (
        message_id TEXT NOT NULL, address TEXT NOT NULL, status TEXT NOT NULL,
        code INTEGER, reply TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (message_id, address))""",
    """CREATE TABLE quarantine (
        id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL, data BYTEA NOT NULL)""",
    # Appended by every finish, folded by housekeeping.
    "CREATE TABLE stats_hourly (hour BIGINT NOT NULL, kind TEXT NOT NULL, bucket INTEGER NOT NULL, n BIGINT NOT NULL)",
    "CREATE INDEX ix_stats_hour ON stats_hourly (hour)",
    "CREATE TABLE reasons_hourly (hour BIGINT NOT NULL, reason TEXT NOT NULL, n BIGINT NOT NULL)",
    "CREATE INDEX ix_reasons_hour ON reasons_hourly (hour)",
    "CREATE TABLE depth_hourly (hour BIGINT PRIMARY KEY, depth BIGINT NOT NULL)",
    "CREATE TABLE status_deltas (status TEXT NOT NULL, n BIGINT NOT NULL)",
    """CREATE TABLE daemons (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
        version TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL, spool TEXT NOT NULL)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"INSERT INTO meta VALUES ('store_id', '{uuid.uuid4().hex}')",
    # The claim walks this index in order and stops at `batch` rows.
    "CREATE INDEX ix_due ON messages (priority DESC, due_at) WHERE status IN ('queued', 'deferred')",
    "CREATE INDEX ix_waiting_due ON messages (due_at) WHERE status IN ('queued', 'deferred')",
    "CREATE INDEX ix_lease ON messages (lease_until) WHERE status = 'sending'",
    "CREATE INDEX ix_finished ON messages (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX ix_status_created ON messages (status, created_at)",
    "CREATE INDEX ix_created ON messages (created_at)",
    "CREATE INDEX ix_attempts ON attempts (message_id)",
    # Status counts: one delta row per statement and status (transition tables), never a hot row.
    _COUNT.format(op="ins", rows="SELECT status, 1 AS n FROM new_rows"),
    _COUNT.format(op="upd", rows="SELECT status, -1 AS n FROM old_rows UNION ALL SELECT status, 1 FROM new_rows"),
    _COUNT.format(op="del", rows="SELECT status, -1 AS n FROM old_rows"),
    """CREATE TRIGGER count_ins AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION mailmand_count_ins()""",
    """CREATE TRIGGER count_upd AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION mailmand_count_upd()""",
    """CREATE TRIGGER count_del AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION mailmand_count_del()""",
    *(f"INSERT INTO status_deltas VALUES ('{s.value}', 0)" for s in Status),
]
V2 = [
    # The claim an attempt answered: a finish committed once is never applied twice
    # (a COMMIT whose answer the network lost, then tried again).
    "ALTER TABLE attempts ADD COLUMN claim INTEGER",
    "CREATE UNIQUE INDEX ix_attempt_claim ON attempts (message_id, claim) WHERE claim IS NOT NULL",
]
V3 = [
    # Finished messages by hour and final state, a roll-up, filled from the rows there are.
    "INSERT INTO stats_hourly (hour, kind, bucket, n) SELECT floor(finished_at / 3600)::bigint,"
    " 'done.' || status, 0, count(*) FROM messages WHERE finished_at IS NOT NULL"
    " AND status IN ('sent', 'failed', 'expired') GROUP BY 1, 2",
]
MIGRATIONS = [V1, V2, V3]
