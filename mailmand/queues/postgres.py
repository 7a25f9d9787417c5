"""The outbox queue: a table in the application's own PostgreSQL database.

This module is the only one that imports psycopg for a queue. A producer
inserts one row per message: on a connection of its own, committed at once
(`put`), or on the application's connection inside its transaction (`put_in`),
so that the message exists if and only if the application's transaction
commits. The same statement calls `pg_notify`, which PostgreSQL delivers only
at commit: the daemon's wake-up. (Polling is the floor: a lost notification
costs one poll.)

The daemon takes rows with `FOR UPDATE SKIP LOCKED` in a transaction it keeps
open while the store ingests them, and deletes them in that transaction once
the store has committed. A daemon that dies leaves nothing locked (its
connection ends, its transaction rolls back): the next take reads those rows
again, and the store ignores an id it holds. Two daemons never take the same
row. A take held past the lease is ended by the server
(`idle_in_transaction_session_timeout`), so a hung daemon cannot sit on rows.

A row holds the JSON record in a `json` column: PostgreSQL itself refuses
anything else at the INSERT, and nothing is ever unpickled. The table's name
comes from the configuration: it is checked (`parse_sql_table`) and always
quoted with `psycopg.sql`, never formatted into SQL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from ..config.values import parse_sql_table
from ..errors import ConfigError, NoOutbox, QueueError, QueueUnavailable
from ..repeats import Repeats
from ..stores import dsn as dsnmod
from ..stores.deadline import Deadlines
from .base import Found, Item, Queue, QueueInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import QueueConfig

log = logging.getLogger(__name__)

KEY = "email.queue.default"
LISTEN_TICK = 1.0  # seconds between the listener's looks at its stop flag
# Server errors that a restart will not fix: credentials (class 28), a database
# that does not exist (3D), privileges (42501).
REFUSED = ("28", "3D", "42501")
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError)
OUTBOX_SQL = "mailmand outbox-sql"  # the command that prints the table's DDL

T = TypeVar("T")
NOTHING: tuple[int, float | None] = (0, None)  # a table not made yet: no rows, no age


def identifier(table: str) -> sql.Identifier:
    """The configured table as a quoted (optionally schema-qualified) identifier."""
    try:
        parse_sql_table(table)
    except ValueError as exc:
        raise ConfigError(str(exc), f"{KEY}.table") from None
    return sql.Identifier(*table.split("."))


def ddl(table: str) -> list[sql.Composed]:
    """The outbox table's DDL: what the daemon runs when the table is missing,
    and what `mailmand outbox-sql` prints for an app's own migrations."""
    t = identifier(table)
    return [
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (\n"
                "    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
                "    record json NOT NULL,\n"
                "    created_at timestamptz NOT NULL DEFAULT now()\n"
                ")").format(t),
        sql.SQL("COMMENT ON TABLE {} IS {}").format(
            t, sql.Literal("mailmand outbox: one JSON record per message, deleted once the daemon has it")),
    ]


def _cause(exc: BaseException) -> str:
    """An error in one line: its type and the first line of its text (libpq's never hold the password)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _refused(exc: psycopg.Error) -> bool:
    state = exc.sqlstate or ""
    text = str(exc)
    return state.startswith(REFUSED) or "authentication failed" in text or (
        "database" in text and "does not exist" in text)


def _item(row_id: int, text: str) -> Item:
    raw = text.encode("utf-8", "surrogateescape")
    # The column is json, so this parses; what it holds may still not be a
    # record: ingest says so when it decodes it, and quarantines it.
    try:
        return Item(token=row_id, data=json.loads(raw), raw=raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Item(token=row_id, data=None, raw=raw, error=f"not valid JSON: {exc}")


class PostgresQueue(Queue):
    transactional = True

    def __init__(self, cfg: QueueConfig, *, daemon: bool = False, lease: float = 300.0) -> None:
        self.table = str(cfg.table)
        t = identifier(self.table)
        params = dsnmod.check(cfg.dsn, f"{KEY}.dsn")
        self.dsn = str(cfg.dsn)
        self.where = f"{dsnmod.mask(self.dsn)} table {self.table}"
        self._dbname = params.get("dbname")
        # `timeout` bounds every wait, as the store's: connecting, a dead peer (keepalives),
        # each statement (the server's statement_timeout), and the daemon's calls (Deadlines).
        self.timeout = cfg.timeout
        self._kwargs: dict[str, Any] = dsnmod.connect_kwargs(cfg.timeout)
        if cfg.password and not params.get("password"):
            self._kwargs["password"] = cfg.password  # `password` (or `password-file`) with a dsn that has none
        # The wake-up's channel: the table's own name (a quoted identifier to LISTEN).
        self.channel = self.table.rpartition(".")[2]
        self.daemon = daemon
        self.lease = lease
        self._t = t
        # Rendered once (the name is checked ASCII): psycopg then caches the statement's
        # conversion, where a Composed is rendered again at every call (~10 µs of a put).
        self._insert = sql.SQL("WITH m AS (INSERT INTO {} (record) VALUES (%s)) SELECT pg_notify(%s, '')"
                               ).format(t).as_string(None)
        self._select = sql.SQL("SELECT id, record::text FROM {} WHERE id <> ALL(%s::bigint[]) ORDER BY id LIMIT %s"
                               " FOR UPDATE SKIP LOCKED").format(t).as_string(None)
        self._relock = sql.SQL("SELECT id FROM {} WHERE id = ANY(%s::bigint[]) FOR UPDATE SKIP LOCKED"
                               ).format(t).as_string(None)
        self._delete = sql.SQL("DELETE FROM {} WHERE id = ANY(%s::bigint[])").format(t).as_string(None)
        self._own: psycopg.Connection[Any] | None = None  # a producer's, and readers' (status, metrics)
        self._own_lock = threading.Lock()
        self._claim: psycopg.Connection[Any] | None = None  # the daemon's: its open take
        self._held: set[int] = set()  # rows locked by the open take
        self._again: list[Item] = []  # held rows released back to us: taken first
        self._table_ready = False
        self._listener: _Listener | None = None
        self._woken = threading.Event()
        self._deadlines = Deadlines(cfg.timeout, f"the outbox {self.where}")  # a thread from the first call on

    def __repr__(self) -> str:
        return f"postgres outbox {self.where}"

    # -- errors --------------------------------------------------------------

    def _missing(self) -> NoOutbox:
        return NoOutbox(f"the outbox table {self.table!r} does not exist in {dsnmod.mask(self.dsn)}: "
                        f"the daemon creates it when it starts; or add the SQL that `{OUTBOX_SQL}` prints "
                        "to your migrations")

    def _refusal(self, exc: psycopg.Error) -> ConfigError:
        return ConfigError(f"the outbox database refused the connection: {_cause(exc)}", f"{KEY}.dsn")

    def _unavailable(self, what: str, exc: BaseException) -> QueueUnavailable:
        return QueueUnavailable(f"cannot {what} the outbox {self.where}: {_cause(exc)}")

    # -- producers -----------------------------------------------------------

    def _connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(dsnmod.with_statement_timeout(self.dsn, self.timeout), **self._kwargs, **kwargs)

    def _on_own(self, what: str, fn: Callable[[psycopg.Connection[Any]], T], retry: bool = True) -> T:
        """Run `fn` on our own autocommit connection, made again once if it was lost."""
        with self._own_lock:
            for attempt in (1, 2):
                try:
                    if self._own is None or self._own.closed:
                        self._own = self._connect(autocommit=True, application_name="mailmand")
                    return fn(self._own)
                except psycopg.errors.UndefinedTable:
                    raise self._missing() from None
                except UNAVAILABLE as exc:
                    self._close_own()
                    if _refused(exc):  # credentials, a database that is not there: no retry mends it
                        raise self._refusal(exc) from None
                    # A statement cut off mid-way may have committed: a second row with
                    # the same record id is harmless (ingest stores an id once).
                    if attempt == 2 or not retry:
                        raise self._unavailable(what, exc) from None
                except psycopg.Error as exc:
                    raise QueueError(f"outbox {what} failed on {self.where}: {_cause(exc)}") from None
        raise AssertionError("unreachable")

    def _close_own(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None

    def put(self, record: dict[str, Any]) -> None:
        # One statement in autocommit: committed (and the daemon notified) when it returns.
        data = json.dumps(record, separators=(",", ":"))
        self._on_own("write to", lambda conn: conn.execute(self._insert, (data, self.channel)))

    def put_in(self, record: dict[str, Any], connection: Any) -> None:
        if not isinstance(connection, psycopg.Connection):
            raise TypeError(f"connection= takes a psycopg 3 connection (psycopg.Connection), not a "
                            f"{type(connection).__module__}.{type(connection).__qualname__}")
        if self._dbname and connection.info.dbname != self._dbname:
            # Rows in another database would wait there for ever: no daemon reads them.
            raise ValueError(f"connection= is to database {connection.info.dbname!r}, but the outbox is in "
                             f"{self._dbname!r} ({KEY}.dsn)")
        data = json.dumps(record, separators=(",", ":"))
        try:
            connection.execute(self._insert, (data, self.channel))
        except psycopg.errors.UndefinedTable:
            raise self._missing() from None

    # -- the daemon ----------------------------------------------------------

    def check(self) -> None:
        """At daemon start: make the table if it is missing, and refuse what a
        restart will not fix (credentials, privileges, a table that is not an
        outbox). An unreachable database is not an error here: the daemon
        starts, delivers what its store holds, and ingest retries."""
        try:
            self._claimer()
        except QueueUnavailable:
            return

    def _claimer(self) -> psycopg.Connection[Any]:
        if self._claim is not None and not self._claim.closed:
            return self._claim
        self._held.clear()
        self._again = []
        try:
            conn = self._connect(application_name="mailmand-outbox")
        except psycopg.Error as exc:
            if _refused(exc):
                raise self._refusal(exc) from None
            raise self._unavailable("reach", exc) from None
        try:
            # A take left open longer than the lease (a daemon hung mid-ingest) is
            # ended by the server, and its rows go back to the other daemons.
            conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                         (f"{int(self.lease * 1000)}",))
            self._ensure_table(conn)
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._claim = conn
        return conn

    def _ensure_table(self, conn: psycopg.Connection[Any]) -> None:
        if self._table_ready:
            return
        try:
            with conn.transaction():
                # Daemons starting together take turns (CREATE IF NOT EXISTS can race).
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"mailmand outbox {self.table}",))
                found = conn.execute("SELECT to_regclass(%s)", (self._t.as_string(conn),)).fetchone()
                if found is None or found[0] is None:
                    for stmt in ddl(self.table):
                        conn.execute(stmt)
                    log.info("created the outbox table %s", self.where)
                # A table of that name that is not an outbox: say so now, not at every take.
                conn.execute(sql.SQL("SELECT id, record::text, created_at FROM {} WHERE false").format(self._t))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ConfigError(f"cannot use the outbox table {self.where}: {_cause(exc)}; create it (the SQL "
                              f"`{OUTBOX_SQL}` prints) and GRANT SELECT, UPDATE, DELETE ON it to the daemon's user",
                              f"{KEY}.table") from None
        except psycopg.errors.UndefinedColumn as exc:
            raise ConfigError(f"the table {self.table!r} in {dsnmod.mask(self.dsn)} is not a mailmand outbox "
                              f"({_cause(exc)}): choose another table name", f"{KEY}.table") from None
        except UNAVAILABLE:
            raise
        except psycopg.Error as exc:
            raise QueueError(f"cannot make the outbox table {self.where}: {_cause(exc)}") from None
        self._table_ready = True

    def _on_claim(self, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        for attempt in (1, 2):
            reused = self._claim is not None and not self._claim.closed
            conn = self._claimer()
            idle = not self._held  # no take open on it: nothing to lose by starting over
            try:
                # Timed: a server gone dark behind something that still acks TCP fails
                # the call at `timeout` instead of holding ingest for ever.
                with self._deadlines.call():
                    self._deadlines.attach(conn)
                    return fn(conn)
            except psycopg.errors.UndefinedTable:
                self._drop_claim()
                self._table_ready = False  # dropped under us: made again at the next take
                raise QueueUnavailable(f"the outbox table {self.where} is gone; it is made again at the next "
                                       "try") from None
            except UNAVAILABLE as exc:
                # The server rolls the open take back: every held row is in the table again.
                self._drop_claim()
                if attempt == 1 and reused and idle:
                    continue  # lost while idle (a server restart, a firewall's timeout): once more, on a new one
                raise self._unavailable(what, exc) from None
            except psycopg.Error as exc:
                self._drop_claim()
                raise QueueError(f"outbox {what} failed on {self.where}: {_cause(exc)}") from None
        raise AssertionError("unreachable")

    def _drop_claim(self) -> None:
        self._held.clear()
        self._again = []
        if self._claim is not None:
            self._claim.close()
            self._claim = None

    def take(self, limit: int) -> list[Item]:
        items, self._again = self._again[:limit], self._again[limit:]
        if len(items) >= limit:
            return items

        def select(conn: psycopg.Connection[Any]) -> list[Item]:
            rows = conn.execute(self._select, (list(self._held), limit - len(items))).fetchall()
            if not rows and not self._held:
                conn.rollback()  # nothing taken: hold no transaction open while idle
            self._held.update(row_id for row_id, _ in rows)
            return [_item(row_id, text) for row_id, text in rows]

        return items + self._on_claim("take from", select)

    def ack(self, items: list[Item]) -> None:
        ids = [item.token for item in items]
        if not ids:
            return

        def delete(conn: psycopg.Connection[Any]) -> None:
            conn.execute(self._delete, (ids,))
            conn.commit()
            self._held.difference_update(ids)
            if self._held:
                # The commit unlocked the rows still held: lock them again. One that
                # another daemon took meanwhile is ingested by both (stored once).
                conn.execute(self._relock, (list(self._held),))

        self._on_claim("delete from", delete)

    def release(self, items: list[Item]) -> None:
        mine = [item for item in items if item.token in self._held]
        if self._held <= {item.token for item in mine}:
            self._rollback()  # nothing else is held: every row is back in the table as it was
        else:
            self._again = mine + self._again

    def _rollback(self) -> None:
        self._held.clear()
        self._again = []
        if self._claim is not None and not self._claim.closed:
            try:
                self._claim.rollback()
            except psycopg.Error:
                self._drop_claim()  # the server rolls it back when the connection ends

    def resume(self) -> int:
        """Nothing to hand back: a dead daemon's take ended with its connection."""
        self._rollback()
        return 0

    def wait(self, timeout: float) -> bool:
        if self._listener is None:
            self._listener = _Listener(self.dsn, self._kwargs, self.channel, self.where, self._woken, self.timeout)
            started = time.monotonic()
            self._listener.ready.wait(timeout)  # a commit from here on wakes us
            timeout = max(0.0, timeout - (time.monotonic() - started))
        woken = self._woken.wait(timeout)
        self._woken.clear()
        return woken

    def wake(self) -> None:
        self._woken.set()

    # -- readers ---------------------------------------------------------------

    def _count(self, conn: psycopg.Connection[Any]) -> tuple[int, float | None]:
        row = conn.execute(sql.SQL("SELECT count(*), extract(epoch FROM now() - min(created_at))::float8"
                                   " FROM {}").format(self._t)).fetchone()
        return (int(row[0]), row[1]) if row else (0, None)

    def _read(self, fn: Callable[[psycopg.Connection[Any]], T], empty: T) -> T:
        """A read that creates nothing: `empty` while there is no table yet."""
        try:
            return self._on_own("read", fn, retry=False)
        except NoOutbox:
            return empty

    def pending(self) -> int:
        """Rows not yet ingested (those a daemon holds in an open take included)."""
        return self._read(self._count, NOTHING)[0]

    def info(self) -> QueueInfo:
        waiting, oldest = self._read(self._count, NOTHING)
        return QueueInfo(engine="postgres", where=self.where, waiting=waiting, label="outbox",
                         oldest_s=None if oldest is None else round(oldest, 3))

    def probe(self) -> str:
        """A connection with the configured credentials, then the table: there (with
        what waits in it), or not made yet."""
        try:
            waiting, oldest = self._on_own("read", self._count, retry=False)
        except NoOutbox:
            self._on_own("reach", lambda conn: conn.execute("SELECT 1"), retry=False)
            return (f"reachable; no table {self.table!r} yet (the daemon creates it when it starts, or add what "
                    f"`{OUTBOX_SQL}` prints to your migrations)")
        since = "" if oldest is None or not waiting else f", the oldest for {oldest:.0f}s"
        return f"reachable, {waiting} waiting to be ingested{since}"

    def origin(self, item: Item) -> str:
        return f"postgres outbox {self.where} row {item.token}"

    def find(self, message_id: str) -> Found | None:
        """Whether the message waits in the table. (Which rows a daemon holds in
        its open take the server does not show: `taken` is always False.)"""
        query = sql.SQL("SELECT id FROM {} WHERE record->>'id' = %s LIMIT 1").format(self._t)
        row = self._read(lambda conn: conn.execute(query, (message_id,)).fetchone(), None)
        if row is None:
            return None
        return Found(id=message_id, where=self.where, entry=str(row[0]), taken=False)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._deadlines.close()
        self._drop_claim()
        with self._own_lock:
            self._close_own()


class _Listener:
    """LISTEN on a connection of its own, setting `woken` at each producer's
    commit. A lost connection is made again with backoff (polling covers the
    gap), and at reconnection `woken` is set: what was committed meanwhile."""

    def __init__(self, dsn: str, kwargs: dict[str, Any], channel: str, where: str, woken: threading.Event,
                 timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._kwargs = kwargs
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel))
        self._woken = woken
        self.ready = threading.Event()  # LISTENing (set once, at the first success)
        self._stop = threading.Event()
        self._down = Repeats(log, f"LISTEN on the outbox {where}")
        self._thread = threading.Thread(target=self._run, name="mailmand-outbox-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = 1.0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, application_name="mailmand-outbox-listen",
                                     **self._kwargs) as conn:
                    conn.execute(self._listen)
                    self.ready.set()
                    if self._down.cleared():
                        self._woken.set()
                    wait = 1.0
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=LISTEN_TICK):
                            self._woken.set()
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                self._down.failed("cannot LISTEN for new outbox rows (polling meanwhile): %s", _cause(exc))
                self._stop.wait(wait)
                wait = min(wait * 2, 30.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=LISTEN_TICK + self._timeout)
