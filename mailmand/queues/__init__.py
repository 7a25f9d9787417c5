"""Queue engines, chosen from an explicit table (literal imports, so PyInstaller sees them)."""

from __future__ import annotations

from ..config import QueueConfig
from ..errors import ConfigError
from .base import Item, Queue


def open_queue(cfg: QueueConfig, *, daemon: bool = False) -> Queue:
    """Open the configured queue. `daemon=True` for the single consumer."""
    if cfg.engine == "spool":
        from .spool import SpoolQueue

        return SpoolQueue(cfg.path, daemon=daemon)
    raise ConfigError(f"unknown queue engine {cfg.engine!r} (this build knows: spool)",
                      "email.queue.default.engine")


__all__ = ["Item", "Queue", "open_queue"]
