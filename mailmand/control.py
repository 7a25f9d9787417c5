"""What the operator's commands share, `mailmand` and sendmail's `-q`/`mailq`
alike: the store opened for a command, the daemon running on this spool, a
flush that wakes it, and output that survives `| head`.

Imported by `mailmand.cli` and `mailmand.sendmail`; imports neither.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from . import locks
from .queues import lock_path
from .stores import open_store, shared
from .stores.base import Store
from .stores.model import Status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .config import Config


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
    reads a shared store needs them (its dsn): load again with them."""
    if shared(cfg.server.database):
        from . import config as configmod

        return configmod.load(path)
    return cfg


def local_pid(cfg: Config) -> int | None:
    """The pid of the daemon holding this queue's single-instance lock, or None
    (no daemon, or a queue that many daemons share)."""
    path = lock_path(cfg.queue)
    return None if path is None else locks.holder(path)


def flush(cfg: Config, ids: Sequence[str] | None) -> tuple[int, str]:
    """Deferred mail (all, or `ids`) due now; then wake the daemon. (flushed, what the wake did)."""
    with store(cfg) as s:
        shared = not s.single_instance  # a shared store wakes its daemons itself (PostgreSQL: NOTIFY)
        n = s.flush(list(ids) if ids else None, time.time())
        for message_id in ids or ():
            info = s.get(message_id)  # NotFound: exit 1 with "no message with id"
            if info.status is not Status.DEFERRED:
                print(f"mailmand: {message_id} is {info.status.value}, not deferred: left as it is",
                      file=sys.stderr)
    if not n:
        return n, "nothing to wake the daemon for"
    return n, "the store told every daemon" if shared else wake(cfg)


def wake(cfg: Config) -> str:
    """Tell the daemon on this spool to dispatch now (SIGUSR1), and say how it went."""
    import signal

    pid = local_pid(cfg)
    if pid is None:
        return "no daemon is running on this spool: they go out when it starts"
    try:
        os.kill(pid, signal.SIGUSR1)
    except PermissionError:
        return (f"could not wake the daemon (pid {pid}: not this user's): "
                f"they go out within {cfg.server.interval:g}s")
    except ProcessLookupError:
        return "the daemon just stopped: they go out when it starts"
    return f"woke the daemon (pid {pid})"


def quiet_broken_pipe() -> None:
    """`mailmand list | head`: the reader left. Point stdout at /dev/null so
    that the interpreter's final flush does not print "Broken pipe"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


__all__ = ["flush", "load_for_store", "local_pid", "quiet_broken_pipe", "store", "wake"]
