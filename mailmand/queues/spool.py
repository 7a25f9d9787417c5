"""The local spool: a persist-queue SQLiteAckQueue in a directory.

This module is the only one that imports persist-queue. Records are JSON
(persist-queue's JSON serializer); pickle is never used, so whoever can write
the spool cannot run code in the daemon.

Producers put through persist-queue. The daemon takes, acks and releases a
whole batch in one statement on persist-queue's own table and connection:
persist-queue's `get` takes one row per transaction and scans from the first
row past every row already taken, so a batch of n cost O(n²) (5 s of a 7 s
`--once` of 5,000 messages). The table layout and status values it relies on
are pinned against persist-queue's own by tests/test_queue.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import persistqueue

from ..errors import QueueError, QueueUnavailable, SpoolPermissionError
from .base import Found, Item, Queue, QueueInfo

log = logging.getLogger(__name__)

DB_FILE = "data.db"  # persist-queue's default file name
BUSY_TIMEOUT = 30.0  # seconds sqlite waits on a lock before raising
RETRY_FOR = 60.0  # seconds a put keeps retrying a locked database
# persist-queue's table for the queue named "default", and its AckStatus.unack:
# rows below it are waiting. Read directly by `pending()`, so that `mailmand
# status` need not import persist-queue (tests check them against persist-queue).
TABLE = "ack_queue_default"
READY = 1  # AckStatus.ready: waiting (as is 0, inited)
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
            os.chmod(path, 0o2770)  # setgid: files inherit the directory's group
        db = path / DB_FILE
        if not db.exists():
            os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o660))
        if db.stat().st_uid == os.geteuid():
            # SQLite creates -wal and -shm with the database file's mode.
            os.chmod(db, (db.stat().st_mode | 0o660) & 0o7777)
    except PermissionError as exc:
        raise SpoolPermissionError(f"cannot write the spool at {path}: permission denied "
                         "(is this user in the daemon's group?)") from exc




class _Wake:
    """watchdog handler: sets an event when a producer's commit writes the spool."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def dispatch(self, event: Any) -> None:
        # A commit writes the WAL: modified (or created/moved for a new file).
        # Opens, reads and attribute changes are not news.
        if not event.is_directory and event.event_type in ("modified", "created", "moved"):
            self.event.set()


class SpoolQueue(Queue):
    """persist-queue behind our Queue contract. Producers open it with
    auto_resume=False: only the daemon may hand back in-flight items."""

    def __init__(self, path: Path, *, daemon: bool = False, min_free: int = 0, readonly: bool = False) -> None:
        self.path = Path(path)
        self.daemon = daemon
        self.min_free = min_free
        self._opened: persistqueue.SQLiteAckQueue | None = None
        self._woken = threading.Event()
        self._observer: Any = None
        self._resume_due = False  # a resume that could not write (disk full) is done at the next take
        if readonly:
            return  # `status`, `show`: create nothing
        _prepare_dir(self.path)
        if daemon:
            try:
                self._q  # noqa: B018 (open now: the daemon should fail at start, not at its first take)
            except QueueError as exc:
                if not _disk_full(exc.__cause__ or exc):
                    raise
                # A full disk must not stop the daemon: it drains once it can write.
                log.warning("%s; ingest will retry", exc)

    def __repr__(self) -> str:
        return f"spool {self.path}"

    @property
    def _q(self) -> persistqueue.SQLiteAckQueue:
        """persist-queue's queue, opened on first use (`status` only counts, without it)."""
        if self._opened is None:
            self._opened = self._retry(self._open, "open")
        return self._opened

    def _open(self) -> persistqueue.SQLiteAckQueue:
        import persistqueue

        q = persistqueue.SQLiteAckQueue(
            str(self.path), auto_resume=False, multithreading=True,
            timeout=BUSY_TIMEOUT, serializer=_JsonSerializer,
        )
        if self.daemon:
            # Ack marks need not be durable: an item whose ack is lost is
            # ingested again, and ingest is idempotent. Producers keep FULL.
            for conn in (q._putter, q._getter):  # with multithreading, two connections
                if conn is not None:
                    conn.execute("PRAGMA synchronous=NORMAL")
        return q

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

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """One statement in one transaction on persist-queue's own connection and lock."""
        q = self._q

        def run() -> list[Any]:
            db: sqlite3.Connection = q._putter  # type: ignore[assignment]  # set by its __init__
            with q.tran_lock, db:
                return db.execute(sql, args).fetchall()

        return list(self._retry(run, "write"))

    # -- producers -------------------------------------------------------------

    def put(self, record: dict[str, Any]) -> None:
        self._check_free()
        # persist-queue commits each put (auto_commit), and SQLite's WAL with
        # synchronous=FULL fsyncs at commit: durable when this returns.
        self._retry(self._q.put, "put", record)

    def _check_free(self) -> None:
        """Postfix's queue_minfree: refuse new mail while the spool's disk is
        nearly full, so the daemon always has room to take and ack."""
        if not self.min_free:
            return
        try:
            st = os.statvfs(self.path)
        except OSError:
            return  # the put itself will say what is wrong
        free = st.f_bavail * st.f_frsize
        if free < self.min_free:
            raise QueueUnavailable(f"the spool's disk is nearly full: {size(free)} free at {self.path}, "
                                   f"below the floor of {size(self.min_free)} (email.queue.default.min-free); "
                                   "free some space and try again")

    # -- the daemon --------------------------------------------------------------

    def take(self, limit: int) -> list[Item]:
        if self._resume_due:
            self.resume()
        # One statement: mark a batch taken (status unack, as persist-queue's
        # get does) and read it; the oldest first.
        rows = self._write(
            f"UPDATE {TABLE} SET status = {UNACK} WHERE _id IN"
            f" (SELECT _id FROM {TABLE} WHERE status < {UNACK} ORDER BY _id LIMIT ?)"
            " RETURNING _id, data", (limit,))
        rows.sort()
        return [_item(rowid, data) for rowid, data in rows]

    def ack(self, items: list[Item]) -> None:
        # Deleted at once: persist-queue's ack keeps the row (marked acked),
        # and its get scans past kept rows, so the drain would slow as history grows.
        if items:
            self._write(f"DELETE FROM {TABLE} WHERE _id IN (SELECT value FROM json_each(?))",
                        (json.dumps([item.token for item in items]),))

    def release(self, items: list[Item]) -> None:
        if items:
            self._write(f"UPDATE {TABLE} SET status = {READY} WHERE _id IN (SELECT value FROM json_each(?))",
                        (json.dumps([item.token for item in items]),))

    def resume(self) -> int:
        try:
            n = int(self._retry(lambda: self._q.unack_count(), "resume"))
            if n:
                self._retry(self._q.resume_unack_tasks, "resume")
        except QueueUnavailable as exc:
            log.warning("%s; taking back in-flight items once the spool can be written", exc)
            self._resume_due = True
            return 0
        self._resume_due = False
        return n

    def wait(self, timeout: float) -> bool:
        if self._observer is None:
            from watchdog.observers import Observer

            self._observer = Observer()
            self._observer.schedule(_Wake(self._woken), str(self.path), recursive=False)
            self._observer.start()
        woken = self._woken.wait(timeout)
        self._woken.clear()
        return woken

    def wake(self) -> None:
        self._woken.set()

    def pending(self) -> int:
        if self._opened is not None:
            return int(self._retry(self._opened._count, "count"))
        rows = self._read(f"SELECT count(*) FROM {TABLE} WHERE status < ?", (UNACK,))
        return int(rows[0][0]) if rows else 0

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """A read-only query that creates nothing: [] when there is no spool yet."""
        db_file = self.path / DB_FILE
        if not db_file.exists():
            return []
        try:
            with closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)) as db:
                return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # nothing was ever put
            raise QueueError(f"cannot read the spool at {self.path}: {exc}") from exc

    def info(self) -> QueueInfo:
        return QueueInfo(engine="spool", where=str(self.path), waiting=self.pending())

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
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        if self._opened is not None:
            self._opened.close()
            self._opened = None
