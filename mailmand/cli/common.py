"""What several commands share: opening the store without creating it, and
finding the daemon that runs on this spool."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..config.values import parse_duration
from ..errors import UsageError
from ..stores import open_store
from ..stores.base import DaemonInfo, Store

# The daemon's single-instance lock in the spool (daemon.LOCK_FILE; not
# imported from there, which would load the scheduler into every command).
SPOOL_LOCK = "mailmand.lock"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config


@contextmanager
def store(cfg: Config) -> Iterator[Store]:
    """The store, for a command. Never creates it (NoStore: "no store yet at
    PATH (the daemon creates it)"): read-only commands must leave nothing
    behind for a daemon of another user to trip over."""
    s = open_store(cfg.server.database)
    try:
        yield s
    finally:
        s.close()


def load_for_store(path: str | None, cfg: Config) -> Config:
    """A producer's configuration lacks the daemon's secrets; a command that
    reads a shared store (PostgreSQL) needs its dsn: load again with them."""
    if cfg.server.database.engine == "postgres":
        from .. import config as configmod

        return configmod.load(path)
    return cfg


def local_pid(cfg: Config) -> int | None:
    """The pid of the daemon holding this spool's lock, or None. Reads the lock
    file without creating it; a held flock means a live daemon (the kernel
    drops it when the process dies, so a stale file says nothing)."""
    if cfg.queue.engine != "spool":
        return None
    try:
        fd = os.open(cfg.queue.path / SPOOL_LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        except OSError:
            return None
        return None  # we got the lock: nobody holds it
    finally:
        os.close(fd)  # drops our shared lock, if we took it


def daemons(cfg: Config, s: Store, now: float) -> list[DaemonInfo]:
    """The live daemons the store knows (every one on a shared store), with
    version and start time; the spool lock vouches that a local one is alive."""
    live = s.daemons(now)
    pid = local_pid(cfg)
    if pid is not None and not any(d.pid == pid for d in live):
        import socket

        live.append(DaemonInfo(id="", host=socket.gethostname(), pid=pid, version="", started_at=0.0,
                               heartbeat_at=0.0, spool=str(cfg.queue.path)))
    return live


def duration(flag: str, value: str) -> float:
    try:
        return parse_duration(value)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{flag}: {exc}") from None


def now() -> float:
    return time.time()
