"""The queue contract: producers put records, the daemon takes and acks them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Item:
    """One item taken from a queue. `data` is the decoded JSON, or None with
    `error` saying why it could not be decoded (the daemon quarantines it)."""

    token: Any  # engine-specific handle for ack
    data: Any
    raw: bytes
    error: str | None = None


class Queue:
    """Base class; its methods are the whole contract of a queue engine."""

    # True when `take` can block until something arrives (no watcher needed).
    blocking = False

    def put(self, record: dict[str, Any]) -> None:
        """Append one JSON-able record. Returns only when it is durable."""
        raise NotImplementedError

    def take(self, limit: int) -> list[Item]:
        """Take up to `limit` items without blocking. Taken items stay in the
        queue, invisible to other takers, until acked; a daemon that dies
        before acking gets them back from `resume()`."""
        raise NotImplementedError

    def ack(self, items: list[Item]) -> None:
        """Forget items whose content is committed elsewhere."""
        raise NotImplementedError

    def release(self, items: list[Item]) -> None:
        """Hand taken items back, unacked, for a later take (the store could not take them now)."""
        raise NotImplementedError

    def resume(self) -> int:
        """Daemon only: hand back items taken but never acked. Returns how many."""
        raise NotImplementedError

    def pending(self) -> int:
        """Items waiting (not yet taken)."""
        raise NotImplementedError

    def holds(self, message_id: str) -> bool:
        """True when a record with this id waits in the queue, not ingested
        yet (`mailmand show` says so instead of "no message"). Read-only."""
        return False

    def close(self) -> None:
        pass
