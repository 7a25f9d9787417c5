"""What several commands share: opening the store without creating it, and
finding the daemon that runs on this spool."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, parse_duration
from ..errors import MailmandError, UsageError
from ..stores import open_store
from ..stores.base import Store

# The daemon's single-instance lock in the spool (daemon.LOCK_FILE; not
# imported from there, which would load the scheduler into every command).
SPOOL_LOCK = "mailmand.lock"


class NoStore(MailmandError):
    """A read-only command on a host where the daemon never ran."""


def missing_store(cfg: Config) -> Path | None:
    """The store's file when it does not exist yet (SQLite), else None."""
    db = cfg.server.database
    if db.engine in ("sqlite3", "sqlite") and not db.path.exists():
        return db.path
    return None


@contextmanager
def store(cfg: Config) -> Iterator[Store]:
    """The store, for a command. Never creates it: read-only commands must
    leave nothing behind for a daemon of another user to trip over."""
    path = missing_store(cfg)
    if path is not None:
        raise NoStore(f"no store yet at {path} (the daemon creates it)")
    s = open_store(cfg.server.database)
    try:
        yield s
    finally:
        s.close()


@dataclass(frozen=True)
class DaemonInfo:
    pid: int | None
    since: float | None
    version: str | None = None
    host: str | None = None


def local_daemon(cfg: Config) -> DaemonInfo | None:
    """The daemon holding this spool's lock, or None. Reads the lock file
    without creating it; a held flock means a live daemon (the kernel drops
    it when the process dies, so a stale file says nothing)."""
    if cfg.queue.engine != "spool":
        return None
    path = cfg.queue.path / SPOOL_LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return DaemonInfo(int(text) if text.isdigit() else None, os.fstat(fd).st_mtime)
        except OSError:
            return None
        return None  # we got the lock: nobody holds it
    finally:
        os.close(fd)  # drops our shared lock, if we took it


def duration(flag: str, value: str) -> float:
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{flag}: {exc}") from None


def now() -> float:
    return time.time()
