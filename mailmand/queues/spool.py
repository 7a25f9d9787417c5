"""The local spool: a persist-queue SQLiteAckQueue in a directory.

This module is the only one that imports persist-queue. Records are JSON
(persist-queue's JSON serializer); pickle is never used, so whoever can write
the spool cannot run code in the daemon.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import persistqueue

from ..errors import QueueError, SpoolPermissionError
from .base import Item, Queue

log = logging.getLogger(__name__)

DB_FILE = "data.db"  # persist-queue's default file name
BUSY_TIMEOUT = 30.0  # seconds sqlite waits on a lock before raising
RETRY_FOR = 60.0  # seconds a put keeps retrying a locked database
# persist-queue's table for the queue named "default", and its AckStatus.unack:
# rows below it are waiting. Read directly by `pending()`, so that `mailmand
# status` need not import persist-queue (tests check them against persist-queue).
TABLE = "ack_queue_default"
INITED = 0  # AckStatus.inited: what a put writes
UNACK = 2


@dataclass(frozen=True)
class _Loaded:
    data: Any
    raw: bytes
    error: str | None


class _JsonSerializer:
    """persist-queue's JSON serializer, but a bad item comes back as a value
    (with its bytes and the reason) instead of an exception, so the daemon can
    quarantine it and go on."""

    @staticmethod
    def dumps(value: Any) -> bytes:
        import persistqueue.serializers.json as pq_json

        return pq_json.dumps(value)

    @staticmethod
    def loads(value: bytes | str) -> _Loaded:
        import persistqueue.serializers.json as pq_json

        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
        try:
            return _Loaded(pq_json.loads(raw), raw, None)
        except (ValueError, UnicodeDecodeError) as exc:
            return _Loaded(None, raw, f"not valid JSON: {exc}")


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


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


def persistqueue_empty() -> type[Exception]:
    from persistqueue.exceptions import Empty

    return Empty


class SpoolQueue(Queue):
    """persist-queue behind our Queue contract. Producers open it with
    auto_resume=False: only the daemon may hand back in-flight items."""

    def __init__(self, path: Path, *, daemon: bool = False, readonly: bool = False) -> None:
        self.path = Path(path)
        self.daemon = daemon
        self.readonly = readonly  # `status`, `show`: never create the spool
        if not readonly:
            _prepare_dir(self.path)
        self._opened: persistqueue.SQLiteAckQueue | None = None
        self._direct: sqlite3.Connection | None = None  # a producer's own connection (see _put_direct)
        self._direct_lock = threading.Lock()
        if daemon:
            self._q  # noqa: B018 (open now: the daemon should fail at start, not at its first take)

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
                raise QueueError(f"spool {what} failed at {self.path}: {exc}") from exc

    def put(self, record: dict[str, Any]) -> None:
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
        if self._direct is None:
            db = sqlite3.connect(self.path / DB_FILE, timeout=BUSY_TIMEOUT, isolation_level=None,
                                 check_same_thread=False)
            try:
                if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                              (TABLE,)).fetchone() is None:
                    db.close()
                    return False
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # fsync at commit, as persist-queue's default
            except BaseException:
                db.close()
                raise
            self._direct = db
        data = json.dumps(record).encode("utf-8")  # persistqueue.serializers.json.dumps
        with self._direct_lock:
            self._direct.execute(f"INSERT INTO {TABLE} (data, timestamp, status) VALUES (?, ?, ?)",
                                 (data, time.time(), INITED))
        return True

    def take(self, limit: int) -> list[Item]:
        items: list[Item] = []
        while len(items) < limit:
            try:
                got = self._retry(self._q.get, "take", False, None, None, False, True)
            except persistqueue_empty():
                break
            loaded: _Loaded = got["data"]
            items.append(Item(token=got["pqid"], data=loaded.data, raw=loaded.raw, error=loaded.error))
        return items

    def ack(self, items: list[Item]) -> None:
        for item in items:
            self._retry(self._q.ack, "ack", None, item.token)
        if items:
            # The ack queue keeps acked rows and its get scans past them:
            # delete them as we go, or the drain slows as history grows.
            self._retry(self._q.clear_acked_data, "clear", 0, 0, True)

    def release(self, items: list[Item]) -> None:
        for item in items:
            self._retry(self._q.nack, "release", None, item.token)

    def resume(self) -> int:
        n = self._q.unack_count()
        self._retry(self._q.resume_unack_tasks, "resume")
        return n

    def pending(self) -> int:
        if self._opened is not None:
            return int(self._retry(self._opened._count, "count"))
        if not (self.path / DB_FILE).exists():
            return 0  # no spool yet: nothing was ever put
        try:
            with closing(sqlite3.connect(f"file:{self.path / DB_FILE}?mode=ro", uri=True,
                                         timeout=BUSY_TIMEOUT)) as db:
                return int(db.execute(f"SELECT count(*) FROM {TABLE} WHERE status < ?", (UNACK,)).fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0  # nothing was ever put
            raise QueueError(f"cannot read the spool at {self.path}: {exc}") from exc

    def holds(self, message_id: str) -> bool:
        db = self.path / DB_FILE
        if not db.exists():
            return False
        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)) as conn:
                rows = conn.execute(f"SELECT data FROM {TABLE} WHERE status < ? AND instr(data, ?) > 0",
                                    (UNACK + 1, message_id.encode())).fetchall()
        except sqlite3.OperationalError:
            return False  # no table yet, or unreadable: nothing we can say
        for (data,) in rows:
            loaded = _JsonSerializer.loads(data)
            if isinstance(loaded.data, dict) and loaded.data.get("id") == message_id:
                return True
        return False

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if self._opened is not None:
            self._opened.close()
            self._opened = None
