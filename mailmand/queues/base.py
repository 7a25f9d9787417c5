"""The queue contract: producers put records, the daemon takes and acks them."""

from __future__ import annotations

from ..frozen import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The directory of a queue on disk (the spool): setgid, so that files inherit
# its group, and writable by that group (the producers).
DIR_MODE = 0o2770


class Item(Frozen):
    """One item taken from a queue. `data` is the decoded JSON, or None with
    `error` saying why it cannot be ingested (the daemon quarantines it)."""

    _fields = ("token", "data", "raw", "error")
    token: Any  # engine-specific handle for ack
    data: Any
    raw: bytes
    error: str | None

    def __init__(self, token: Any, data: Any, raw: bytes, error: str | None = None) -> None:
        self._set(locals())


class QueueInfo(Frozen):
    """What `mailmand status` shows about a queue. Plain data (`to_json()`)."""

    _fields = ("engine", "where", "waiting", "length", "pending", "consumers", "label", "oldest_s")
    engine: str
    where: str  # the spool's path, or the Redis URL / PostgreSQL dsn (password masked) and key / table
    waiting: int  # not yet ingested: in the queue, taken by a daemon or not
    length: int | None  # Redis: entries in the stream (waiting + pending)
    pending: int | None  # Redis: delivered to a daemon, not yet acked
    consumers: list[dict[str, Any]]  # Redis: name, pending, idle_s
    label: str  # what `status` calls the queue: spool, stream, outbox
    oldest_s: float | None  # age of the oldest item waiting, where the engine knows it

    def __init__(self, engine: str, where: str, waiting: int, length: int | None = None, pending: int | None = None,
                 consumers: list[dict[str, Any]] | None = None, label: str | None = None,
                 oldest_s: float | None = None) -> None:
        consumers = [] if consumers is None else consumers
        label = label or ("spool" if length is None else "stream")
        self._set(locals())

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Found(Frozen):
    """A message still in the queue (not yet in the store): `Queue.find`."""

    _fields = ("id", "where", "entry", "taken")
    id: str
    where: str
    entry: str  # the engine's handle: a spool row or a stream entry id
    taken: bool  # a daemon has taken it and not yet committed it (as far as the engine can tell)

    def __init__(self, id: str, where: str, entry: str, taken: bool) -> None:
        self._set(locals())


class Queue:
    """Base class; its methods are the whole contract of a queue engine.

    One daemon thread calls take/ack/release/wait; producers call put from any
    thread (the client keeps one handle per process)."""

    # put_in() joins the caller's own database transaction (the outbox).
    transactional = False

    def put(self, record: dict[str, Any]) -> None:
        """Append one JSON-able record. Returns only when the engine has it:
        durable on disk (spool), or replied to (Redis, per its appendfsync)."""
        raise NotImplementedError

    def put_many(self, records: list[dict[str, Any]]) -> None:
        """Append several records, durable on return as `put` makes one: in one
        write where the engine can (one transaction and one fsync on the spool, one
        MULTI/EXEC on Redis), so that records that arrived together cost one sync.
        All or none where the engine can say so; when it raises, the caller treats
        every record as not queued (one that was is then queued twice, never lost)."""
        for record in records:
            self.put(record)

    def put_in(self, record: dict[str, Any], connection: Any) -> None:
        """Insert one record inside the caller's open transaction on `connection`
        (a connection of the engine's own driver): it is there if and only if
        that transaction commits, and the commit wakes the daemon. Nothing is
        committed here. Engines that are not `transactional` raise TypeError."""
        raise TypeError(f"this queue ({self!r}) cannot join a database transaction: connection= needs "
                        "the postgres queue engine (email.queue.default.engine: postgres)")

    def take(self, limit: int) -> list[Item]:
        """Take up to `limit` items without blocking. Taken items stay in the
        queue, invisible to other takers, until acked; a daemon that dies
        before acking gets them back from `resume()` (or, for a shared queue,
        another daemon takes them over after the lease)."""
        raise NotImplementedError

    def ack(self, items: list[Item]) -> None:
        """Forget items whose content is committed elsewhere."""
        raise NotImplementedError

    def release(self, items: list[Item]) -> None:
        """Hand taken items back, unacked, for a later take (the store could not take them now)."""
        raise NotImplementedError

    def resume(self) -> int:
        """Daemon only, at start: hand back items taken but never acked. Returns how many."""
        raise NotImplementedError

    def forget_consumers(self, live: set[str]) -> list[str]:
        """Daemon only, at start, on a queue many daemons share: remove the consumers
        whose names are not in `live` (daemons whose heartbeat is older than the
        lease), taking over first what each left pending. Returns the names removed."""
        return []

    def wait(self, timeout: float) -> bool:
        """Daemon only: block until something may be there to take, or
        `timeout` seconds pass, or `wake()` is called. True when woken early
        (a take may still find nothing: a wake-up is a hint, not a promise)."""
        raise NotImplementedError

    def wake(self) -> None:
        """Make a `wait()` in another thread return soon (the daemon is stopping)."""

    def pending(self) -> int:
        """Items not yet ingested: in the queue and not yet acked (taken or not)."""
        raise NotImplementedError

    def info(self) -> QueueInfo:
        """For `status`: never creates anything, never takes anything."""
        return QueueInfo(engine=type(self).__name__, where="?", waiting=self.pending())

    def origin(self, item: Item) -> str:
        """Where an item came from, for the quarantine and the log: the queue and the
        engine's handle of the entry (a spool row, a stream entry)."""
        return f"{self!r} entry {item.token!r}"

    def find(self, message_id: str) -> Found | None:
        """The message with this id if it is still in the queue (for `show`). May scan."""
        return None

    def probe(self) -> str:
        """`check-config --connect`: reach the queue for real, as producers and the
        daemon will (a producer's handle: nothing is created, nothing taken). One line
        on what it found; raises QueueError (QueueUnavailable: cannot be reached now)
        or ConfigError (credentials, a key of the wrong type) naming what failed."""
        return f"reachable, {self.pending()} waiting to be ingested"

    def check(self) -> None:
        """Daemon only, at start: raise ConfigError for what a restart will not fix
        (wrong credentials, a key of the wrong type); warn about the rest."""

    def close(self) -> None:
        pass
