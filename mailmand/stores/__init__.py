"""Store engines, chosen from one explicit table (literal imports, so
PyInstaller sees them). Nothing above this package names an engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .base import Store
from .model import DaemonInfo, Status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import DatabaseConfig

KEY = "email.server.database"


@dataclass(frozen=True)
class Engine:
    open: Callable[[DatabaseConfig, bool], Store]
    check: Callable[[DatabaseConfig], None]  # refuse a configuration before anything is created
    describe: Callable[[DatabaseConfig], str]  # for logs and check-config: never a password
    # The file the store is kept in on this host (the daemon creates its directory
    # and holds a lock beside it), or None: a server that many daemons share, reached
    # with credentials only the daemon's view of the configuration holds.
    file: Callable[[DatabaseConfig], Path | None]

    def lock(self, cfg: DatabaseConfig) -> Path | None:
        """The file lock a daemon (or `migrate`) holds on the store; None: shared by design."""
        file = self.file(cfg)
        return None if file is None else file.with_name(f"{file.name}.lock")

    def directory(self, cfg: DatabaseConfig) -> Path | None:
        """The store's directory on this host, or None (a server)."""
        file = self.file(cfg)
        return None if file is None else file.parent

    def shared(self, cfg: DatabaseConfig) -> bool:
        """Many daemons use it at once, and commands reach it with the daemon's secrets."""
        return self.file(cfg) is None


def _sqlite(cfg: DatabaseConfig, create: bool) -> Store:
    from .sqlite import SQLiteStore

    return SQLiteStore(cfg.path, create=create)


def _postgres(cfg: DatabaseConfig, create: bool) -> Store:
    _postgres_check(cfg)
    from .postgres import PostgresStore

    return PostgresStore(cfg, create=create)


def _postgres_check(cfg: DatabaseConfig) -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:  # the optional driver is not installed
        raise ConfigError(f"the postgres engine needs {exc.name}, which is not installed: "
                          "pip install 'mailmand[postgres]'", f"{KEY}.engine") from None
    from .dsn import check

    check(cfg.dsn)


def _postgres_describe(cfg: DatabaseConfig) -> str:
    from .dsn import mask

    return f"postgres {mask(cfg.dsn or '')}"


SQLITE = Engine(_sqlite, lambda cfg: None, lambda cfg: str(cfg.path), lambda cfg: cfg.path)
ENGINES: dict[str, Engine] = {
    "sqlite3": SQLITE,
    "sqlite": SQLITE,
    "postgres": Engine(_postgres, _postgres_check, _postgres_describe, lambda cfg: None),
}


def engine(cfg: DatabaseConfig) -> Engine:
    """The configured engine, its driver present and its settings valid (ConfigError otherwise)."""
    try:
        found = ENGINES[cfg.engine]
    except KeyError:
        raise ConfigError(f"unknown database engine {cfg.engine!r} (this build knows: "
                          f"{', '.join(sorted(ENGINES))})", f"{KEY}.engine") from None
    found.check(cfg)
    return found


def shared(cfg: DatabaseConfig) -> bool:
    """Many daemons use the store at once, and commands reach it with the daemon's
    secrets (which a producer's view of the configuration lacks: nothing is checked here)."""
    found = ENGINES.get(cfg.engine)
    return found is not None and found.shared(cfg)


def open_store(cfg: DatabaseConfig, create: bool = False) -> Store:
    """Open the configured store. Only the daemon (and `migrate`) create it
    (`create=True`); any other command on a store that does not exist yet
    raises StoreError "no store yet at PATH (the daemon creates it)"."""
    return engine(cfg).open(cfg, create)


def describe(cfg: DatabaseConfig) -> str:
    """The store as logs and `check-config` show it: a path, or a dsn with its password masked."""
    found = ENGINES.get(cfg.engine)
    return found.describe(cfg) if found else cfg.engine


def check_connect(cfg: DatabaseConfig) -> str:
    """`check-config --connect`: open the store as a command would, and say
    what it holds. Raises StoreUnavailable (unreachable) or StoreError (no store yet)."""
    store = open_store(cfg)
    try:
        counts = store.counts()
    finally:
        store.close()
    waiting = counts[Status.QUEUED] + counts[Status.DEFERRED] + counts[Status.SENDING]
    held = f", {counts[Status.HELD]} held" if counts[Status.HELD] else ""
    return f"store {describe(cfg)}: reachable, {sum(counts.values())} message(s), {waiting} waiting{held}"


__all__ = ["ENGINES", "DaemonInfo", "Engine", "Status", "Store", "check_connect", "describe", "engine",
           "open_store", "shared"]
