"""The PostgreSQL store: one database that any number of daemons share.

What differs from SQLite: claims take rows with FOR UPDATE SKIP LOCKED (two
daemons never wait on, or take, the same message); counters are appended as
deltas and folded by housekeeping (no hot row every writer updates); the
schema migrates under an advisory lock; NOTIFY wakes the other daemons when
something becomes due, LISTENed on a dedicated connection.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..config import DatabaseConfig
from ..errors import NoStore, StoreUnavailable
from ..repeats import Repeats
from .deadline import Deadlines
from .dsn import check as check_dsn
from .dsn import connect_kwargs, mask, with_statement_timeout
from .events import LAST
from .model import Claimed, Position, Status
from .pgschema import OWN, RENUMBERED, WORDS
from .schema import Db, upgrade, version
from .sql import LIVE, SQLStore, cause

log = logging.getLogger(__name__)
# The pool logs every failed reconnection, and psycopg every pipeline it could not
# close on a lost connection, at WARNING: during an outage that is a flood. The
# store reports outages itself, once (mailmand.repeats.Repeats).
logging.getLogger("psycopg").setLevel(logging.ERROR)

CHANNEL = "mailmand_due"
MIGRATION_LOCK = 0x6D61696C6D616E64  # pg_advisory_xact_lock key: "mailmand"
POOL_WAIT = 5.0  # seconds a caller waits for a pooled connection before StoreUnavailable
# Ingest, the dispatch feed and its commits, heartbeat and housekeeping, a reader (status, metrics).
DAEMON_POOL = 6
RECORD_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded)
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
STUCK = 5.0  # seconds a call may wait before /healthz names the store (it fails at `timeout`)


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """The shared SQL's `?` parameters in psycopg's spelling."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Cursor:
    """A cursor with `?` parameters, in pipeline mode when given the pipeline."""

    def __init__(self, cur: psycopg.Cursor[Any], pipe: psycopg.Pipeline | None = None) -> None:
        self._cur = cur
        self._pipe = pipe

    def execute(self, sql: str, args: Sequence[Any] = ()) -> _Cursor:
        self._cur.execute(_pg(sql), args)
        return self

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    @property
    def rowcount(self) -> int:
        if self._pipe is not None:
            self._pipe.sync()  # in pipeline mode the count is known once the replies are in
        return self._cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(_pg(sql), rows)


class PostgresStore(SQLStore):
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    RECORD_ERRORS = RECORD_ERRORS
    LOCK_ROWS = " FOR UPDATE"
    GREATEST = "greatest"
    JSON_AGG = "json_agg(address)::text"
    ILIKE = "ILIKE"
    SCAN_HINT = ""
    STEP_OF = "floor(({0} - ?) / ?)::bigint"
    EACH_RECIPIENT = "json_array_elements_text(coalesce(m.pending_rcpt, m.rcpt_to)::json) AS r(value)"
    DOMAIN = "lower(substring(r.value from '[^@]*$'))"
    EVENT_JSON = ("json_build_object('id', e.id, 'type', e.type, 'message', e.message_id, 'tags',"
                  " coalesce(m.tags, '{}')::json, 'recipients', e.recipients::json, 'relay', e.relay, 'code', e.code,"
                  " 'reply', e.reply, 'attempt', e.attempt, 'at', round(e.at::numeric, 6))::text")

    def __init__(self, cfg: DatabaseConfig, create: bool = False) -> None:
        check_dsn(cfg.dsn)
        self.dsn = str(cfg.dsn)
        self.name = f"postgres {mask(self.dsn)}"
        self.timeout = cfg.timeout
        self._me = ""  # the registered daemon: NOTIFY payload, so it can ignore its own
        self._problem: str | None = None  # the last call's failure, for /healthz (None: it worked)
        self._deadlines = Deadlines(cfg.timeout, self.name)
        kwargs: dict[str, Any] = {**connect_kwargs(cfg.timeout), "application_name": "mailmand"}
        try:
            # The real reason, if it cannot connect. No statement_timeout here: a migration may take long.
            with psycopg.connect(self.dsn, **kwargs) as conn:
                self._migrate(conn, create)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot reach {self.name}: {cause(exc)}") from exc
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            with_statement_timeout(self.dsn, cfg.timeout), kwargs=kwargs, min_size=1,
            max_size=cfg.pool_size or (DAEMON_POOL if create else 2), open=False, timeout=POOL_WAIT,
            check=self._check, name="mailmand")
        self._pool.open()

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it hands out, timed as part of the call."""
        self._deadlines.attach(conn)
        ConnectionPool.check_connection(conn)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, the whole call timed (Deadlines): past `timeout`, it fails."""
        call = None
        try:
            with self._deadlines.call() as call, self._pool.connection() as conn:
                self._deadlines.attach(conn)
                yield conn
        except UNAVAILABLE as exc:
            if call is not None and call.cut:
                raise psycopg.OperationalError(f"no answer within {self.timeout:g}s "
                                               "(email.server.database.timeout): closed the connection") from exc
            raise

    def problem(self) -> str | None:
        waited = self._deadlines.waiting()
        if waited >= min(STUCK, self.timeout):
            return f"{self.name}: a call has waited {waited:.0f}s for an answer (timeout {self.timeout:g}s)"
        return self._problem

    def _migrate(self, conn: psycopg.Connection[Any], create: bool) -> None:
        """Bring the schema to the current version, one daemon at a time: the
        advisory lock makes three daemons starting together take turns."""
        with conn.transaction(), conn.cursor() as cur:
            db = _Cursor(cur)
            db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            exists = db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                if not create:
                    raise NoStore(f"no store yet at {self.name} (the daemon creates it)")
            elif 0 < version(db) <= RENUMBERED:  # its first version held what both now call 1 and 2
                db.execute("UPDATE schema_version SET version = version + 1")
                db.execute("INSERT INTO schema_version VALUES (1)")
            upgrade(db, self.name, WORDS, OWN)

    @contextmanager
    def tx(self, durable: bool = True) -> Iterator[Db]:
        """One transaction on a pooled connection: committed on exit, rolled back on error.
        Not `durable`: the commit does not wait for the WAL flush (see SQLiteStore.tx)."""
        try:
            # Pipeline mode: statements go out without waiting for each reply (a
            # finish is several), the connection syncs where a result is read.
            with self._connection() as conn, conn.pipeline() as pipe, conn.cursor() as cur:
                if not durable:
                    cur.execute("SET LOCAL synchronous_commit = off")
                yield _Cursor(cur, pipe)
        except RECORD_ERRORS:
            raise
        except UNAVAILABLE as exc:
            self._problem = f"{self.name} cannot be written: {cause(exc)}"
            raise StoreUnavailable(self._problem) from exc
        self._problem = None

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            with self._connection() as conn:
                rows = conn.execute(_pg(sql), args).fetchall()
        except UNAVAILABLE as exc:
            self._problem = f"{self.name} cannot be read: {cause(exc)}"
            raise StoreUnavailable(self._problem) from exc
        self._problem = None
        return rows

    def _horizon(self) -> Position:
        """Below the oldest transaction still running in this database, every event is
        committed (events.py). Not the cluster's oldest (`pg_snapshot_xmin`): another
        database's long transaction would hold every reader of this one back. The
        snapshot is taken first; the sessions are read after it (a transaction begun in
        between has a larger id than the snapshot knows, so it cannot lower the horizon)."""
        try:
            with self._connection() as conn:
                snapshot = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
                ours = {int(x) for (x,) in conn.execute(
                    "SELECT backend_xid::text FROM pg_stat_activity"
                    " WHERE datname = current_database() AND backend_xid IS NOT NULL").fetchall()}
        except UNAVAILABLE as exc:
            self._problem = f"{self.name} cannot be read: {cause(exc)}"
            raise StoreUnavailable(self._problem) from exc
        assert snapshot is not None
        _, xmax, xip = snapshot[0].split(":")
        # pg_stat_activity gives a transaction id's low 32 bits; the snapshot, all 64.
        running = [int(x) for x in xip.split(",") if x and int(x) % 2**32 in ours]
        return (min(running) if running else int(xmax)) - 1, LAST[1]  # every event of the ones before

    def _due_now(self, db: Db) -> None:
        db.execute("SELECT pg_notify(?, ?)", (CHANNEL, self._me))

    def _write_rollup_rows(self, db: Db, table: str, rows: Sequence[Sequence[Any]]) -> None:
        # Appended, never updated in place: daemons finishing together do not
        # queue on one hot row. Housekeeping folds them; `stats` sums anyway.
        if rows:
            db.executemany(f"INSERT INTO {table} VALUES ({','.join('?' * len(rows[0]))})", rows)

    # -- ingest and dispatch ------------------------------------------------------

    def claim(self, now: float, limit: int, owner: str, lease: float) -> list[Claimed]:
        with self.tx(durable=False) as db:  # a claim lost to a crash is only mail due again
            rows = db.execute(
                "WITH c AS (SELECT id FROM messages WHERE status IN ('queued', 'deferred') AND due_at <= ?"
                "   ORDER BY priority DESC, due_at LIMIT ? FOR UPDATE SKIP LOCKED)"
                " UPDATE messages m SET status = 'sending', lease_owner = ?, lease_until = ?, updated_at = ?,"
                " claims = m.claims + 1 FROM c WHERE m.id = c.id"
                " RETURNING m.id, m.mail_from, coalesce(m.pending_rcpt, m.rcpt_to), m.attempts, m.fails,"
                " m.send_after, m.priority, m.due_at, m.claims, m.paused,"
                " (SELECT raw FROM bodies b WHERE b.id = m.id)",
                (now, limit, owner, now + lease, now)).fetchall()
            if len(rows) == limit:
                self._due_now(db)  # more may be due: let the other daemons take their share
        return self._claimed([r[:10] for r in rows], {r[0]: r[10] for r in rows})

    def _insert_rows(self, db: Db, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]],
                     conflict: str = "") -> None:
        # One statement of arrays, not one per row: a finish of 50 is one INSERT.
        if not rows:
            return
        names = ", ".join(c for c, _ in columns)
        arrays = ", ".join(f"?::{t}[]" for _, t in columns)
        db.execute(f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}){conflict}",
                   [list(c) for c in zip(*rows, strict=True)])

    def _update_finished(self, db: Db, rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, float, int]]:
        # One statement for the group (not one per message): the status-count
        # trigger then runs once per commit. The fence is its WHERE, as in SQLStore's.
        if not rows:
            return []
        cols = list(zip(*rows, strict=True))
        return [(i, at, n) for i, at, n in db.execute(
            "UPDATE messages m SET status = v.status, attempts = m.attempts + 1, fails = m.fails + v.counted,"
            " last_code = v.code, last_error = v.reason, due_at = coalesce(v.due_at, m.due_at),"
            " pending_rcpt = coalesce(v.pending, m.pending_rcpt), lease_owner = NULL, lease_until = NULL,"
            " updated_at = v.at, finished_at = v.finished"
            " FROM unnest(?::text[], ?::int[], ?::int[], ?::text[], ?::float8[], ?::text[], ?::float8[],"
            " ?::float8[], ?::text[], ?::bigint[])"
            " AS v(status, counted, code, reason, due_at, pending, at, finished, id, claim)"
            f" WHERE m.id = v.id AND m.claims = v.claim AND m.{LIVE} RETURNING m.id, m.send_after, m.attempts",
            [list(c) for c in cols]).fetchall()]

    def watch(self, on_due: Callable[[], None]) -> _Listener:
        return _Listener(self.dsn, self.name, lambda: self._me, on_due, self.timeout)

    # -- daemons, counts, upkeep ----------------------------------------------------

    def register(self, daemon: Any) -> None:
        self._me = daemon.id
        super().register(daemon)

    def counts(self) -> dict[Status, int]:
        got = {s: int(n) for s, n in self._read("SELECT status, sum(n) FROM status_deltas GROUP BY status")}
        return {s: got.get(s.value, 0) for s in Status}

    def housekeeping(self, now: float) -> None:
        """Fold appended counters into one row per key. Safe beside writers and
        another daemon's fold: a row is summed by whoever deleted it."""
        with self.tx() as db:
            db.execute("WITH d AS (DELETE FROM status_deltas RETURNING status, n)"
                       " INSERT INTO status_deltas SELECT status, sum(n) FROM d GROUP BY status")
            db.execute("WITH d AS (DELETE FROM stats_hourly RETURNING hour, kind, bucket, n)"
                       " INSERT INTO stats_hourly SELECT hour, kind, bucket, sum(n) FROM d GROUP BY hour, kind, bucket")
            db.execute("WITH d AS (DELETE FROM reasons_hourly RETURNING hour, reason, n)"
                       " INSERT INTO reasons_hourly SELECT hour, reason, sum(n) FROM d GROUP BY hour, reason")
            db.execute("DELETE FROM daemons WHERE heartbeat_at < ?", (now - 86400,))

    def close(self) -> None:
        self._pool.close()
        self._deadlines.close()


class _Listener:
    """LISTEN on a dedicated connection (a pooled one would be handed to
    others mid-wait), calling `on_due` for each other daemon's NOTIFY. Lost
    connections are re-made with backoff; polling at `interval` covers the gap."""

    def __init__(self, dsn: str, name: str, me: Callable[[], str], on_due: Callable[[], None],
                 timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._deadlines = Deadlines(timeout, f"LISTEN on {name}")
        self._me = me
        self._on_due = on_due
        self._stop = threading.Event()
        self._down = Repeats(log, f"LISTEN on {name}")
        self._thread = threading.Thread(target=self._run, name="mailmand-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = 1.0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, application_name="mailmand-listen",
                                     **connect_kwargs(self._timeout)) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if self._down.cleared():
                        self._on_due()  # what was stored while we could not hear it
                    wait = 1.0
                    pinged = time.monotonic()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.payload != self._me():
                                self._on_due()
                        if time.monotonic() - pinged >= self._timeout:
                            self._ping(conn)
                            pinged = time.monotonic()
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                self._down.failed("cannot LISTEN for due mail (polling meanwhile): %s", cause(exc))
                self._stop.wait(wait)
                wait = min(wait * 2, 30.0)

    def _ping(self, conn: psycopg.Connection[Any]) -> None:
        """A LISTEN that hears nothing cannot tell a quiet server from one gone dark
        behind a proxy: ask it something, within the timeout."""
        with self._deadlines.call() as call:
            self._deadlines.attach(conn)
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as exc:
                if call.cut:
                    raise psycopg.OperationalError(f"no answer within {self._timeout:g}s "
                                                   "(email.server.database.timeout)") from exc
                raise

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._deadlines.close()

