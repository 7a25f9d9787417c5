"""The SQLite store: one WAL file, safe for one daemon and many readers.

SQLite-only tricks live here: RETURNING on the claim, index hints, status
counts kept by triggers so `status` never counts a million rows, the file
modes, and the free-space floor below which ingest pauses.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import NoStore, StoreError, StoreUnavailable
from .model import Claimed, Position, Status
from .schema import upgrade
from .sql import SQLStore, cause

if TYPE_CHECKING:
    from ..message import Record

log = logging.getLogger(__name__)

# Stored mail is the daemon user's alone: its group holds the applications, which
# may enqueue but not read what others sent. Operators read it as that user or root.
DIR_MODE = 0o700
FILE_MODE = 0o600  # the database; SQLite gives its -wal and -shm files the same mode
MiB = 1024 * 1024
# Data errors: the record, not the store (a value out of range, a constraint).
RECORD_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, OverflowError, ValueError)

# How SQLite spells the words of the shared schema (stores/schema.py).
WORDS = {"real": "REAL", "bigint": "INTEGER", "blob": "BLOB", "serial_key": "INTEGER PRIMARY KEY",
         "random_id": "lower(hex(randomblob(16)))", "hour_of_finished": "CAST(finished_at / 3600 AS INTEGER)",
         "event_key": "INTEGER PRIMARY KEY AUTOINCREMENT", "txid": "0"}
# SQLite's own part of each version: counters and roll-ups updated in place (one writer).
OWN = {1: [
    """CREATE TABLE IF NOT EXISTS stats_hourly (
        hour INTEGER NOT NULL, kind TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (hour, kind, bucket))""",
    """CREATE TABLE IF NOT EXISTS reasons_hourly (
        hour INTEGER NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, reason))""",
    # Messages per status, kept by triggers: `status` never counts a million rows.
    "CREATE TABLE IF NOT EXISTS status_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS count_ins AFTER INSERT ON messages BEGIN
        UPDATE status_counts SET n = n + 1 WHERE status = NEW.status; END""",
    """CREATE TRIGGER IF NOT EXISTS count_upd AFTER UPDATE OF status ON messages
        WHEN OLD.status <> NEW.status BEGIN
        UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
        UPDATE status_counts SET n = n + 1 WHERE status = NEW.status; END""",
    """CREATE TRIGGER IF NOT EXISTS count_del AFTER DELETE ON messages BEGIN
        UPDATE status_counts SET n = n - 1 WHERE status = OLD.status; END""",
    *(f"INSERT OR IGNORE INTO status_counts VALUES ('{s.value}', 0)" for s in Status),
]}


def min_free(path: Path) -> int:
    """The free-space floor under which ingest pauses, so that outcomes and
    claims always have room: an eighth of the file system, at most 64 MiB."""
    st = os.statvfs(path)
    return min(64 * MiB, st.f_blocks * st.f_frsize // 8)


def _private(path: Path) -> str:
    """Why this user cannot read the store, and whom to run as instead."""
    import pwd

    owner = "the daemon's user"
    for p in (path, *path.parents):
        try:
            owner = pwd.getpwuid(p.stat().st_uid).pw_name
            break
        except (OSError, KeyError):
            continue
    return (f"cannot read the store at {path}: permission denied (stored mail is private to the daemon's "
            f"user): run this as {owner} or root, e.g. sudo -u {owner} mailmand status")


class SQLiteStore(SQLStore):
    single_instance = True  # the daemon opens it under a file lock beside it
    WAITING_INDEX = "INDEXED BY ix_waiting_due"  # left alone the planner reads every waiting row
    # One writer at a time: txid is always 0 and the log is seq alone. (SQLite reads a row
    # comparison on (txid, seq) as a range on txid: every event, each read.)
    LOG_ORDER = "e.seq{0}"

    def _log_range(self, after: Position, upto: Position) -> tuple[str, list[Any]]:
        return "e.seq > ? AND e.seq <= ?", [after[1], upto[1]]
    RECORD_ERRORS = RECORD_ERRORS

    def __init__(self, path: Path, create: bool = False) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self._lock = threading.RLock()
        self._problem: str | None = None  # the last call's failure, for /healthz (None: it worked)
        try:
            exists = self.path.exists()
        except PermissionError:
            raise StoreError(_private(self.path)) from None
        if not exists and not create:
            raise NoStore(f"no store yet at {self.path} (the daemon creates it)")
        try:
            if create:
                self._prepare()
            # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE) in tx().
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an outcome once recorded is never lost
            # The write-ahead log grows to 1,000 pages (4 MiB) before a checkpoint by default,
            # and keeps its size: on a small disk, checkpoint sooner and give the space back.
            wal = max(16, min(1000, self._disk_size() // 4096 // 16))
            self._db.execute(f"PRAGMA wal_autocheckpoint={wal}")
            self._db.execute(f"PRAGMA journal_size_limit={wal * 4096}")
            self._migrate()
        except sqlite3.Error as exc:
            if not create and not os.access(self.path, os.R_OK | os.W_OK):
                raise StoreError(_private(self.path)) from None
            raise StoreUnavailable(f"cannot open the store at {self.path}: {cause(exc)}") from exc
        self._floor = min_free(self.path.parent)

    def _disk_size(self) -> int:
        st = os.statvfs(self.path.parent)
        return st.f_blocks * st.f_frsize

    def _prepare(self) -> None:
        """Create the directory 0700 and the database 0600, whatever the umask. An
        existing database of ours that others may read (an older mailmand made it
        0640) is made 0600, its -wal and -shm with it; a directory that every
        local user may read is warned about (it may hold more than the store)."""
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(parents=True, mode=DIR_MODE)
            os.chmod(folder, DIR_MODE)
        if not self.path.exists():
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            except FileExistsError:
                pass  # made meanwhile by another opener: as good
            os.chmod(self.path, FILE_MODE)
            return
        for p in (self.path, self.path.with_name(self.path.name + "-wal"),
                  self.path.with_name(self.path.name + "-shm")):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if st.st_uid == os.geteuid() and st.st_mode & 0o077:
                os.chmod(p, FILE_MODE)
                log.warning("%s was open to other users (mode %o): made it %o, the daemon's alone",
                            p, stat.S_IMODE(st.st_mode), FILE_MODE)
        if folder.stat().st_mode & stat.S_IROTH:
            log.warning("%s is readable by every local user (mode %o): stored mail is private; "
                        "chmod o-rwx it", folder, stat.S_IMODE(folder.stat().st_mode))

    def _migrate(self) -> None:
        with self.tx() as db:
            upgrade(db, f"the store at {self.path}", WORDS, OWN)
            # A counter row for every status this mailmand knows: a status added since the
            # store was made has had no message in it, so it starts at 0 (the triggers
            # only update rows, and a missing one would lose its count).
            db.executemany("INSERT OR IGNORE INTO status_counts VALUES (?, 0)", [(s.value,) for s in Status])

    @contextmanager
    def tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once so it never dead-ends on upgrade.
        A store that cannot be written raises StoreUnavailable with SQLite's own
        words (a failed COMMIT has already rolled back: no second error hides the first).

        Not `durable`: the commit skips its fsync. For what a power cut may undo
        harmlessly (a claim: the message is due again); the next durable commit
        syncs the log with it, so an outcome never outlives its claim on disk."""
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._tx() as db:
                    yield db
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT (the caller holds the lock)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        try:
            yield self._db
            self._db.execute("COMMIT")
            self._problem = None
        except BaseException as exc:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error worth reporting is the one above
            if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and \
                    not isinstance(exc, RECORD_ERRORS):
                raise self._unavailable(exc) from exc
            raise

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailable:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            try:  # give the log's pages back to the file system (a checkpoint needs no new space)
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
        self._problem = f"the store at {self.path} cannot be written: {cause(exc)}"
        return StoreUnavailable(self._problem)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except (sqlite3.OperationalError, sqlite3.ProgrammingError) as exc:  # (the latter: closed)
                self._problem = f"the store at {self.path} cannot be read: {cause(exc)}"
                raise StoreUnavailable(self._problem) from exc

    def problem(self) -> str | None:
        return self._problem

    # -- ingest ----------------------------------------------------------------

    def insert(self, records: Sequence[Record]) -> int:
        # Below the floor, new mail waits in the queue: what is stored keeps its room to be sent.
        st = os.statvfs(self.path.parent)
        free = st.f_bavail * st.f_frsize
        need = 2 * sum(len(r.raw) for r in records)
        if free - need < self._floor:
            raise StoreUnavailable(f"the store's disk is nearly full ({self.path.parent}: {free // 1024} KiB free,"
                                   f" floor {self._floor // 1024} KiB): ingest waits for room")
        return super().insert(records)

    # -- dispatch --------------------------------------------------------------

    def claim(self, now: float, limit: int, owner: str, lease: float) -> list[Claimed]:
        with self.tx(durable=False) as db:  # a claim lost to a power cut is only mail due again
            rows = db.execute(
                "UPDATE messages SET status = 'sending', lease_owner = ?, lease_until = ?, updated_at = ?,"
                " claims = claims + 1"
                " WHERE id IN (SELECT id FROM messages INDEXED BY ix_due"  # else: every waiting row, sorted
                "   WHERE status IN ('queued', 'deferred')"
                "   AND due_at <= ? ORDER BY priority DESC, due_at LIMIT ?)"
                " RETURNING id, mail_from, coalesce(pending_rcpt, rcpt_to), attempts, fails, send_after,"
                " priority, due_at, claims, paused",
                (owner, now + lease, now, now, limit),
            ).fetchall()
            if not rows:
                return []
            marks = ",".join("?" * len(rows))
            raws = dict(db.execute(f"SELECT id, raw FROM bodies WHERE id IN ({marks})",
                                   [r[0] for r in rows]).fetchall())
        return self._claimed(rows, raws)

    # -- reading ---------------------------------------------------------------

    def counts(self) -> dict[Status, int]:
        got = dict(self._read("SELECT status, n FROM status_counts"))
        return {s: int(got.get(s.value, 0)) for s in Status}

    def close(self) -> None:
        with self._lock:
            self._db.close()
