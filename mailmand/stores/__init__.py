"""Store engines, chosen from an explicit table (literal imports, so PyInstaller sees them)."""

from __future__ import annotations

from ..config import DatabaseConfig
from ..errors import ConfigError
from .base import Status, Store


def open_store(cfg: DatabaseConfig) -> Store:
    if cfg.engine in ("sqlite3", "sqlite"):
        from .sqlite import SQLiteStore

        return SQLiteStore(cfg.path)
    raise ConfigError(f"unknown database engine {cfg.engine!r} (this build knows: sqlite3)",
                      "email.server.database.engine")


__all__ = ["Status", "Store", "open_store"]
