"""Queue engines, chosen from an explicit table (literal imports, so PyInstaller sees them)."""

from __future__ import annotations

from ..config import QueueConfig
from ..errors import ConfigError
from .base import Item, Queue


def open_queue(cfg: QueueConfig, *, daemon: bool = False, readonly: bool = False) -> Queue:
    """Open the configured queue. `daemon=True` for the single consumer;
    `readonly=True` for commands that only look (they create nothing)."""
    if cfg.engine == "spool":
        from .spool import SpoolQueue

        return SpoolQueue(cfg.path, daemon=daemon, readonly=readonly)
    raise ConfigError(f"unknown queue engine {cfg.engine!r} (this build knows: spool)",
                      "email.queue.default.engine")


__all__ = ["Item", "Queue", "open_queue"]
