"""Queue engines, chosen from one table (literal imports, so PyInstaller sees them).

Nothing above this package names an engine: the daemon, ingest and the CLI
see `Queue` (its errors, its `wait()`, its `info()`) and what the table says
about the configured engine (`engine(cfg)`: its directory, its lock, its name).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from ..errors import ConfigError
from ..frozen import Frozen
from .base import DIR_MODE, Found, Item, Queue, QueueInfo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import QueueConfig

KEY = "email.queue.default"
LOCK_FILE = "mailmand.lock"  # the daemon's single-instance lock, in the directory of a queue one daemon reads


class Engine(Frozen):
    """One queue engine, as the table describes it. (`Frozen`, not a dataclass:
    a producer's put loads this module, and `dataclasses` costs it tens of ms.)"""

    _fields = ("open", "noun", "directory")
    open: Callable[[QueueConfig, bool, str, float, bool, bool], Queue]
    noun: str  # what messages call it: "spool", "queue"
    # Its directory on this host (which the daemon creates, and holds its lock in), or
    # None: a queue on a server that many daemons share.
    directory: Callable[[QueueConfig], Path | None]

    def __init__(self, open: Callable[[QueueConfig, bool, str, float, bool, bool], Queue], noun: str,
                 directory: Callable[[QueueConfig], Path | None]) -> None:
        self._set(locals())


def _spool(cfg: QueueConfig, daemon: bool, consumer: str, lease: float, exclusive: bool,
           readonly: bool) -> Queue:
    from .spool import SpoolQueue

    return SpoolQueue(cfg.path, daemon=daemon, min_free=cfg.min_free, readonly=readonly)


def _redis(cfg: QueueConfig, daemon: bool, consumer: str, lease: float, exclusive: bool,
           readonly: bool) -> Queue:
    from .redis import RedisQueue  # imports redis-py, or says which extra to install

    return RedisQueue(cfg, daemon=daemon, consumer=consumer, lease=lease, exclusive=exclusive)


def _outbox() -> ModuleType:
    """The postgres engine's module, or a ConfigError that says what to install."""
    try:
        from . import postgres  # imports psycopg
    except ImportError as exc:
        if exc.name not in ("psycopg", "psycopg_binary", "psycopg_c"):
            raise
        raise ConfigError(f"the postgres queue needs {exc.name}, which is not installed: "
                          "pip install 'mailmand[postgres]'", f"{KEY}.engine") from None
    return postgres


def _postgres(cfg: QueueConfig, daemon: bool, consumer: str, lease: float, exclusive: bool,
              readonly: bool) -> Queue:
    queue: Queue = _outbox().PostgresQueue(cfg, daemon=daemon, lease=lease)
    return queue


def outbox_sql(table: str) -> str:
    """The outbox table's DDL for `table`, as an app's migration would run it (`mailmand outbox-sql`)."""
    postgres = _outbox()
    return "".join(f"{stmt.as_string(None)};\n" for stmt in postgres.ddl(table))


ENGINES: dict[str, Engine] = {
    "spool": Engine(_spool, "spool", lambda cfg: cfg.path),
    "redis": Engine(_redis, "queue", lambda cfg: None),
    "postgres": Engine(_postgres, "outbox", lambda cfg: None),
}


def engine(cfg: QueueConfig) -> Engine:
    """The configured engine (ConfigError for one this build does not know)."""
    try:
        return ENGINES[cfg.engine]
    except KeyError:
        raise ConfigError(f"unknown queue engine {cfg.engine!r} (this build knows: {', '.join(ENGINES)})",
                          f"{KEY}.engine") from None


def lock_path(cfg: QueueConfig) -> Path | None:
    """Where the daemon's single-instance lock for this queue lives, or None
    for a queue that many daemons share."""
    directory = engine(cfg).directory(cfg)
    return None if directory is None else directory / LOCK_FILE


def open_queue(cfg: QueueConfig, *, daemon: bool = False, consumer: str = "mailmand", lease: float = 300.0,
               exclusive: bool = False, readonly: bool = False) -> Queue:
    """Open the configured queue.

    daemon: the consumer side (takes, acks, waits); producers leave it False.
    consumer: the daemon's id (one consumer per daemon on a shared queue).
    lease: how long a taken item may stay unacked before another daemon takes it over.
    exclusive: this daemon is the only one on the queue (its store is single-instance),
        so at start it takes back everything left taken, without waiting for the lease.
    readonly: for `status` and `show`: create nothing.
    """
    return engine(cfg).open(cfg, daemon, consumer, lease, exclusive, readonly)


__all__ = ["DIR_MODE", "ENGINES", "LOCK_FILE", "Engine", "Found", "Item", "Queue", "QueueInfo", "engine",
           "lock_path", "open_queue", "outbox_sql"]
