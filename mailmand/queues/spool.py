"""The local spool: a persist-queue SQLiteAckQueue in a directory.

This module is the only one that imports persist-queue. Records are JSON
(persist-queue's JSON serializer); pickle is never used, so whoever can write
the spool cannot run code in the daemon.

Producers put through persist-queue. The daemon (one per spool: a lock file
says so) reads persist-queue's table itself, a batch per statement, past the
last row it read, and deletes rows once the store has committed them. It
never marks a row as taken: persist-queue's `get` commits a mark per row
(rewriting the row's page) and scans from the first row past every row
already taken, so a batch of n cost O(n²) writes and reads (5 s of a 7 s
`--once` of 5,000 messages), and on a full disk it could not take at all.
What the daemon holds lives in its memory; a daemon that dies leaves those
rows in place, and the next one reads them again (the store ignores a second
insert of an id). The table and status values it relies on are pinned
against persist-queue's own by tests/test_queue.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import QueueError, QueueUnavailable, SpoolPermissionError
from .base import DIR_MODE, Found, Item, Queue, QueueInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any

    import persistqueue

    from ..repeats import Repeats
    from .wake import Wake


def _log() -> logging.Logger:
    """This module's logger. (Imported here: a producer's put never logs, and
    `logging` is a few ms of every `mailmand-sendmail`.)"""
    import logging

    return logging.getLogger(__name__)

DB_FILE = "data.db"  # persist-queue's default file name
BUSY_TIMEOUT = 30.0  # seconds sqlite waits on a lock before raising
RETRY_FOR = 60.0  # seconds a put keeps retrying a locked database
# Above the floor by this much, a put does not look at the WAL's size: SQLite
# checkpoints it at 1,000 pages (4 MiB), so it stays far below this.
WAL_SLACK = 64 * 1024 * 1024
FLUSH_RETRY = (0.5, 10.0)  # seconds between tries to delete ingested rows on a full disk, growing
# How long acked rows may wait for a moment when no producer holds the spool's write lock.
# Until then a delete does not wait for the lock: at 200 puts a second SQLite's busy
# handler (sleeps of 1, 2, 5 ... 100 ms) held a delete up to half a second, and the
# ingest thread, and so the next message, with it. After it, the delete waits as any write.
ACK_PATIENCE = 1.0
SCRUB_EVERY = 1.0  # seconds: the WAL, which still holds what was deleted, is emptied at most this often
# persist-queue's table for the queue named "default", and its AckStatus.unack:
# rows below it are waiting. Read directly by `pending()`, so that `mailmand
# status` need not import persist-queue (tests check them against persist-queue).
TABLE = "ack_queue_default"
INITED = 0  # AckStatus.inited: what a put writes
UNACK = 2  # AckStatus.unack: taken, not yet acked


class _JsonSerializer:
    """persist-queue's JSON serializer for producers' puts. (The daemon reads
    rows itself: a row that does not decode comes back as an Item with its
    bytes and the reason, so it is quarantined and ingest goes on.)"""

    @staticmethod
    def dumps(value: Any) -> bytes:
        import persistqueue.serializers.json as pq_json

        return pq_json.dumps(value)

    @staticmethod
    def loads(value: bytes | str) -> Any:
        import persistqueue.serializers.json as pq_json

        return pq_json.loads(value if isinstance(value, bytes) else value.encode())


def _item(rowid: int, data: bytes | str) -> Item:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
    try:
        return Item(token=rowid, data=json.loads(raw), raw=raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Item(token=rowid, data=None, raw=raw, error=f"not valid JSON: {exc}")


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "disk is full" in str(exc) \
        or "disk I/O error" in str(exc)


def size(n: float) -> str:
    """Bytes for people: 512 B, 1.5 KiB, 100.0 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _prepare_dir(path: Path) -> None:
    """Create the spool so that members of the daemon's group can write it."""
    try:
        if not path.exists():
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, DIR_MODE)  # whatever the umask
        db = path / DB_FILE
        if not db.exists():
            os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o660))
        if db.stat().st_uid == os.geteuid():
            # SQLite creates -wal and -shm with the database file's mode.
            os.chmod(db, (db.stat().st_mode | 0o660) & 0o7777)
    except PermissionError as exc:
        raise SpoolPermissionError(f"cannot write the spool at {path}: permission denied "
                         "(is this user in the daemon's group?)") from exc




class SpoolQueue(Queue):
    """persist-queue behind our Queue contract. Producers open it with
    auto_resume=False: only the daemon may hand back in-flight items."""

    def __init__(self, path: Path, *, daemon: bool = False, min_free: int = 0, readonly: bool = False) -> None:
        self.path = Path(path)
        self.daemon = daemon
        self.min_free = min_free
        self._dir, self._wal = str(self.path), str(self.path / f"{DB_FILE}-wal")  # for a put's free-space check
        self._opened: persistqueue.SQLiteAckQueue | None = None  # producers: persist-queue
        self._db: sqlite3.Connection | None = None  # the daemon: its own connection
        self._woken = threading.Event()  # woken before the first wait()
        self._watch: Wake | None = None
        # The daemon's hold: the last row read, rows released back to it (read
        # again before the rest), and acks not yet written (the disk was full).
        self._seen = 0
        self._again: list[Item] = []
        self._acks: list[int] = []
        self._flush_at = 0.0  # monotonic time of the next try to delete them
        self._flush_delay = FLUSH_RETRY[0]
        self._scrub_at = 0.0  # monotonic time after which the WAL may be emptied again
        self._deleted = False  # rows deleted since the WAL was last emptied
        self._acked_at = 0.0  # monotonic time of the oldest ack not yet deleted
        self.full: Repeats | None = None  # the daemon's "spool disk full" condition (made when first hit)
        self._direct: sqlite3.Connection | None = None  # a producer's own connection (see _put_direct)
        self._direct_lock = threading.Lock()
        if readonly:
            return  # `status`, `show`: create nothing
        _prepare_dir(self.path)
        if daemon:
            try:
                self._conn()  # the daemon should fail at start (permissions), not at its first take
            except QueueUnavailable as exc:
                # A disk with no room even for SQLite's shared-memory index (32 KiB):
                # start all the same, deliver what the store holds, read once there is room.
                _log().warning("%s; the spool is read once there is room", exc)

    def __repr__(self) -> str:
        return f"spool {self.path}"

    def origin(self, item: Item) -> str:
        return f"spool {self.path} row {item.token}"

    @property
    def _q(self) -> persistqueue.SQLiteAckQueue:
        """persist-queue's queue, opened on first use (`status` only counts, without it)."""
        if self._opened is None:
            self._opened = self._retry(self._open, "open")
        return self._opened

    def _open(self) -> persistqueue.SQLiteAckQueue:
        import persistqueue

        return persistqueue.SQLiteAckQueue(
            str(self.path), auto_resume=False, multithreading=True,
            timeout=BUSY_TIMEOUT, serializer=_JsonSerializer,
        )

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            def connect() -> sqlite3.Connection:
                db = sqlite3.connect(self.path / DB_FILE, timeout=BUSY_TIMEOUT, isolation_level=None,
                                     check_same_thread=False)
                try:
                    db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # readable at all?
                    # Deletes need not be durable: a row whose delete is lost is
                    # ingested again, and ingest is idempotent. Producers keep FULL.
                    db.execute("PRAGMA synchronous=NORMAL")
                    # The daemon alone deletes rows: with secure_delete, SQLite zeroes what a
                    # delete frees, so an ingested message cannot be read back from the file.
                    db.execute("PRAGMA secure_delete=ON")
                    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        db.execute("PRAGMA journal_mode=WAL")  # as persist-queue sets it
                except BaseException:
                    db.close()
                    raise
                return db

            self._db = self._retry(connect, "open")
        return self._db

    def _retry(self, fn: Any, what: str, *args: Any) -> Any:
        deadline = time.monotonic() + RETRY_FOR
        delay = 0.005
        while True:
            try:
                return fn(*args)
            except sqlite3.OperationalError as exc:
                if _locked(exc) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                if "readonly" in str(exc) or "unable to open" in str(exc):
                    raise SpoolPermissionError(f"cannot write the spool at {self.path}: {exc} "
                                     "(is this user in the daemon's group?)") from exc
                if _disk_full(exc):
                    raise QueueUnavailable(f"spool {what} failed at {self.path}: {exc}") from exc
                raise QueueError(f"spool {what} failed at {self.path}: {exc}") from exc
            except sqlite3.Error as exc:  # the database refused the write (a damaged file, a constraint)
                raise QueueError(f"spool {what} failed at {self.path}: {exc}") from exc

    def _daemon_sql(self, what: str, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """One statement (one transaction) on the daemon's connection; [] when
        no producer has made the table yet."""
        def run() -> list[Any]:
            try:
                return self._conn().execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

        return list(self._retry(run, what))

    # -- producers -------------------------------------------------------------

    def put(self, record: dict[str, Any]) -> None:
        self._check_free()
        # persist-queue commits each put (auto_commit), and SQLite's WAL with
        # synchronous=FULL fsyncs at commit: durable when this returns.
        if not self.daemon and self._opened is None and self._retry(self._put_direct, "put", record):
            return
        self._retry(self._q.put, "put", record)

    def _put_direct(self, record: dict[str, Any]) -> bool:
        """A producer's put without importing persist-queue (whose import pulls
        in asyncio: half of `mailmand-sendmail`'s start-up). The same row
        persist-queue's `put` writes (its JSON bytes, time, status inited),
        in WAL with synchronous=FULL: durable when this returns. False when the
        spool has no table yet (nobody opened it with persist-queue): then
        persist-queue creates it."""
        db = self._direct_db()
        if db is None:
            return False
        data = json.dumps(record).encode("utf-8")  # persistqueue.serializers.json.dumps
        with self._direct_lock:
            db.execute(f"INSERT INTO {TABLE} (data, timestamp, status) VALUES (?, ?, ?)",
                       (data, time.time(), INITED))
        return True

    def put_many(self, records: list[dict[str, Any]]) -> None:
        """The rows `put` writes, in one transaction: one fsync of the WAL for them all,
        and all or none of them there."""
        if not records:
            return
        self._check_free()
        if self._retry(self._direct_db, "put") is None and self._opened is None:
            self._opened = self._retry(self._open, "open")  # persist-queue makes its table; the rows go in directly
        now = time.time()
        rows = [(json.dumps(record).encode("utf-8"), now, INITED) for record in records]
        self._retry(self._insert_many, "put", rows)

    def _insert_many(self, rows: list[tuple[bytes, float, int]]) -> None:
        db = self._direct_db()
        assert db is not None
        with self._direct_lock:
            db.execute("BEGIN IMMEDIATE")  # the write lock first: nothing to undo when it is busy
            try:
                db.executemany(f"INSERT INTO {TABLE} (data, timestamp, status) VALUES (?, ?, ?)", rows)
                db.execute("COMMIT")  # synchronous=FULL: the WAL is synced before this returns
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # the error that brought us here is the one to tell
                        db.execute("ROLLBACK")
                raise

    def _direct_db(self) -> sqlite3.Connection | None:
        """The producer's own connection (WAL, synchronous=FULL), or None while the spool has no table."""
        if self._direct is None:
            db = sqlite3.connect(self.path / DB_FILE, timeout=BUSY_TIMEOUT, isolation_level=None,
                                 check_same_thread=False)
            try:
                if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (TABLE,)).fetchone() is None:
                    db.close()
                    return None
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # fsync at commit, as persist-queue's default
            except BaseException:
                db.close()
                raise
            self._direct = db
        return self._direct

    def _check_free(self) -> None:
        """Postfix's queue_minfree: refuse new mail while the spool's disk is
        nearly full, so the daemon always has room to delete what it ingested.

        The WAL counts as spent: a checkpoint copies it into the database
        file, which may grow by up to its size. Pages the daemon freed inside
        the database count as free: new rows reuse them. Near the floor, a
        producer checkpoints (and truncates the WAL) before it decides."""
        if not self.min_free:
            return
        free = self._free()
        if free is None or free >= self.min_free:
            return
        conn: Any = self._q._putter
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            reusable = conn.execute("PRAGMA freelist_count").fetchone()[0] * conn.execute(
                "PRAGMA page_size").fetchone()[0]
            free = (self._free() or 0) + reusable
        except sqlite3.Error:
            pass  # busy or full: decide on what was measured
        if free is not None and free < self.min_free:
            raise QueueUnavailable(f"the spool's disk is nearly full: {size(free)} free at {self.path}, "
                                   f"below the floor of {size(self.min_free)} (email.queue.default.min-free); "
                                   "free some space and try again")

    def _free(self) -> int | None:
        """Bytes free on the spool's disk, less the spool's WAL (which is
        looked at only near the floor: one statvfs per put otherwise)."""
        try:
            st = os.statvfs(self._dir)
        except OSError:
            return None  # the put itself will say what is wrong
        free = st.f_bavail * st.f_frsize
        if free >= self.min_free + WAL_SLACK:
            return free
        try:
            return free - os.stat(self._wal).st_size
        except OSError:
            return free

    # -- the daemon --------------------------------------------------------------

    def take(self, limit: int) -> list[Item]:
        items, self._again = self._again[:limit], self._again[limit:]
        if len(items) < limit:
            self._flush_acks()
            # Rows a dead predecessor had marked taken (persist-queue's get, in
            # older versions) are ours too: status <= UNACK. Acked rows persist-
            # queue kept (status 5) are not.
            rows = self._daemon_sql("take", f"SELECT _id, data FROM {TABLE} WHERE _id > ? AND status <= {UNACK}"
                                    " ORDER BY _id LIMIT ?", (self._seen, limit - len(items)))
            if rows:
                self._seen = rows[-1][0]
            items += [_item(rowid, data) for rowid, data in rows]
            if len(items) < limit:
                self._scrub()
        return items

    def _scrub(self) -> None:
        """With nothing more to read: empty the WAL. Its frames still hold the rows
        as they were put, after secure_delete zeroed them in the database file."""
        if not self._deleted or self._acks or time.monotonic() < self._scrub_at:
            return
        self._scrub_at = time.monotonic() + SCRUB_EVERY
        try:
            busy = self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            return  # full or locked: the next idle take tries again
        self._deleted = bool(busy)  # a reader on an older snapshot: not emptied yet

    def ack(self, items: list[Item]) -> None:
        if not self._acks:
            self._acked_at = time.monotonic()
        self._acks.extend(item.token for item in items)
        self._flush_acks()

    def _delete_now(self) -> bool | None:
        """Delete the acked rows if no producer holds the spool's write lock now:
        True if deleted, False if it is held, None on any other error (which the
        careful path in `_flush_acks` reports)."""
        db = self._conn()
        try:
            db.execute("PRAGMA busy_timeout = 0")
            try:
                db.execute(f"DELETE FROM {TABLE} WHERE _id IN (SELECT value FROM json_each(?))",
                           (json.dumps(self._acks),))
            finally:
                db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        except sqlite3.OperationalError as exc:
            return False if _locked(exc) else None
        self._acks = []
        self._deleted = True
        return True

    def _flush_acks(self) -> None:
        """Delete acked rows (persist-queue would keep them, and scan past them).
        On a full disk, in small steps with a checkpoint between (a delete
        writes each row's page to the WAL; the checkpoint gives that space
        back); what still does not fit waits for the next ingest. The store has
        those rows already: a restart meanwhile ingests them again, as no-ops."""
        if not self._acks or time.monotonic() < self._flush_at:
            return  # after a failure, wait before the next try: a failed write wakes the watcher, do not spin
        if time.monotonic() - self._acked_at < ACK_PATIENCE and self._delete_now() is not None:
            return  # deleted, or a producer holds the lock: the next take or ack tries again
        ids, step = self._acks, len(self._acks)
        while ids:
            chunk = ids[:step]
            try:
                self._daemon_sql("ack", f"DELETE FROM {TABLE} WHERE _id IN (SELECT value FROM json_each(?))",
                                 (json.dumps(chunk),))
            except QueueUnavailable as exc:
                if step > 1:
                    step = max(1, step // 8)
                    self._checkpoint()
                    continue
                self._acks = ids
                self._flush_at = time.monotonic() + self._flush_delay
                self._flush_delay = min(self._flush_delay * 2, FLUSH_RETRY[1])
                self._full().failed("%s; %d ingested item(s) stay in the spool until there is space to delete them",
                                 exc, len(ids))
                return
            ids = ids[len(chunk):]
            self._deleted = True
            if step < len(self._acks):
                self._checkpoint()
        self._acks = []
        self._flush_delay = FLUSH_RETRY[0]
        if self.full is not None:
            self.full.cleared()

    def _full(self) -> Repeats:
        if self.full is None:
            from ..repeats import Repeats

            self.full = Repeats(_log(), "spool disk full")
        return self.full

    def _checkpoint(self) -> None:
        try:
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # busy or full: the next delete tells

    def release(self, items: list[Item]) -> None:
        self._again = items + self._again  # offered first at the next take

    def resume(self) -> int:
        """Read the spool from its first row again. Returns the rows a dead
        predecessor had marked taken (older versions marked them)."""
        self._seen, self._again = 0, []
        try:
            rows = self._daemon_sql("resume", f"SELECT count(*) FROM {TABLE} WHERE status = {UNACK}")
        except QueueUnavailable:
            return 0  # the disk is full; the count is only for the log
        return int(rows[0][0]) if rows else 0

    def wait(self, timeout: float) -> bool:
        watch = self._watching()
        if self._woken.is_set():
            self._woken.clear()
            return True
        return watch.wait(timeout)

    def _watching(self) -> Wake:
        """The wake-up, made at the first wait (the ingest loop waits once before it first
        reads: a write after that is reported, one before it is read)."""
        if self._watch is None:
            from .wake import watch  # the daemon's alone: producers never wait

            self._watch = watch(self.path)
        return self._watch

    def wake(self) -> None:
        self._woken.set()
        if self._watch is not None:
            self._watch.wake()

    def pending(self) -> int:
        """Rows in the spool not yet ingested (what the daemon holds in memory included)."""
        rows = self._read(f"SELECT count(*) FROM {TABLE} WHERE status <= ?", (UNACK,))
        return int(rows[0][0]) if rows else 0

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """A read-only query that creates nothing: [] when there is no spool yet."""
        db_file = self.path / DB_FILE
        if not db_file.exists():
            return []
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)) as db:
                return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # nothing was ever put
            raise QueueError(f"cannot read the spool at {self.path}: {exc}") from exc

    def info(self) -> QueueInfo:
        return QueueInfo(engine="spool", where=str(self.path), waiting=self.pending())

    def probe(self) -> str:
        """The spool can be written by this user (a file made in it and removed), its
        database too, and read; a spool not made yet is made by the daemon."""
        if not self.path.exists():
            return "not created yet (the daemon creates it at its first start)"
        if not self.path.is_dir():
            raise QueueError(f"the spool {self.path} is not a directory")
        import tempfile

        try:
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".mailmand-check-"):
                pass
        except OSError as exc:
            raise SpoolPermissionError(f"cannot write the spool {self.path}: {exc.strerror or exc} "
                                       "(is this user in the daemon's group?)") from None
        db = self.path / DB_FILE
        if db.exists() and not os.access(db, os.R_OK | os.W_OK):
            raise SpoolPermissionError(f"cannot write the spool's database {db} (is this user in the daemon's group?)")
        return f"writable, {self.pending()} waiting to be ingested"

    def find(self, message_id: str) -> Found | None:
        # persist-queue's JSON has `"id": "..."`; the match is confirmed on the decoded row.
        needle = json.dumps({"id": message_id})[1:-1]
        for rowid, data, status in self._read(
                f"SELECT _id, data, status FROM {TABLE} WHERE instr(data, ?) > 0 AND status <= ?",
                (needle.encode(), UNACK)):
            item = _item(rowid, data)
            if isinstance(item.data, dict) and item.data.get("id") == message_id:
                return Found(id=message_id, where=str(self.path), entry=str(rowid), taken=status == UNACK)
        return None

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if self._db is not None:
            if self._acks:  # acked rows still waiting for a free moment: delete them now, waiting
                self._acked_at = -ACK_PATIENCE
                try:
                    self._flush_acks()
                except QueueError:
                    pass  # left in the spool: the next daemon ingests them again, as no-ops
            self._db.close()
            self._db = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._opened is not None:
            self._opened.close()
            self._opened = None
