"""The Redis queue: a stream at key `name`, read by the consumer group `mailmand`.

This module is the only one that imports redis-py. An entry holds the same
JSON record the spool holds (field `record`; never pickle). Producers `XADD`;
each daemon is one consumer of the group and reads with `XREADGROUP`, blocking
in `wait()` so a new message is ingested at once. An entry is acked and deleted
(`XACK` + `XDEL`; Redis 7.0 has no XACKDEL) only after the store committed it.
Entries left pending by a daemon that died are taken over with `XAUTOCLAIM`
once idle longer than the lease; one delivered more than `MAX_DELIVERIES`
times (a daemon died on it each time) comes back as an error to quarantine.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import ConfigError, MailmandError, QueueError, QueueUnavailable
from .base import Found, Item, Queue, QueueInfo

if TYPE_CHECKING:

    from ..config import QueueConfig

log = logging.getLogger(__name__)

GROUP = "mailmand"  # the consumer group every daemon joins
FIELD = b"record"  # the entry's one field: the JSON record
MAX_DELIVERIES = 5  # more deliveries than this without a commit: quarantined
MAX_BLOCK = 1.0  # seconds one XREADGROUP BLOCK may last: how soon a wait() notices wake()
READ = 500  # entries read by one wait()
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0  # a slow Redis (appendfsync always on a busy disk) is not a dead one
KEY = "email.queue.default"

T = TypeVar("T")


def masked(url: str) -> str:
    """The URL with its password replaced by `***`, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = quote(parts.username or "", safe="")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_of(cfg: QueueConfig) -> str:
    """The configured URL, or one built from the Go original's host/port/db keys."""
    if cfg.url:
        return cfg.url
    auth = f":{quote(cfg.password, safe='')}@" if cfg.password else ""
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return f"redis://{auth}{host}:{cfg.port}/{cfg.db}"


def _redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError("the redis queue needs redis-py: pip install 'mailmand[redis]'",
                          f"{KEY}.engine") from None
    return redis


class RedisQueue(Queue):
    def __init__(self, cfg: QueueConfig, *, daemon: bool = False, consumer: str = "mailmand",
                 lease: float = 300.0, exclusive: bool = False) -> None:
        r = _redis()
        self.key = cfg.name
        self.url = masked(url_of(cfg))
        self.daemon = daemon
        self.consumer = consumer
        self.lease = lease
        self.exclusive = exclusive  # the only daemon on this stream: take over every pending entry at start
        kwargs: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT,
                                  "socket_timeout": COMMAND_TIMEOUT + MAX_BLOCK,
                                  "health_check_interval": 30}
        if cfg.url and cfg.password and urlsplit(cfg.url).password is None:
            kwargs["password"] = cfg.password  # `password` (or `password-file`) with a url that has none
        try:
            # Any: redis-py 8 types replies as unions of every RESP shape; ours are RESP2 bytes.
            self._r: Any = r.Redis.from_url(url_of(cfg), **kwargs)
        except ValueError as exc:  # a URL redis-py cannot read
            raise ConfigError(f"not a Redis URL ({exc}): {self.url}", f"{KEY}.url") from None
        self._errors = r.exceptions
        self._buffer: deque[Item] = deque()  # read from Redis (pending on us), not yet taken
        self._unacked: list[bytes] = []  # committed in the store, but the ack did not reach Redis
        # Where to go on reading entries pending on us (after a restart or a
        # take-over), or None to read new ones. Every re-delivery comes through
        # this one read, which is what counts deliveries (XREADGROUP from an id).
        self._pel_from: str | None = None
        self._group_ready = False
        self._had_group = False  # this process saw the group: finding it gone means Redis lost it
        self._added = 0  # the stream's entries-added, as last seen: it never goes down unless Redis lost data
        self._claim_after = 0.0  # monotonic time of the next XAUTOCLAIM pass
        self._woken = threading.Event()  # wake(): the waiting read ends at its next turn

    def __repr__(self) -> str:
        return f"redis {self.url} key {self.key}"

    def origin(self, item: Item) -> str:
        return f"redis {self.url} key {self.key} entry {_s(item.token)}"

    # -- errors --------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one Redis command; its errors become ours, naming the queue."""
        e = self._errors
        try:
            return fn(*args, **kwargs)
        except e.AuthenticationError as exc:
            raise ConfigError(f"Redis at {self.url} refused the credentials ({exc})",
                              f"{KEY}.password") from None
        except e.ResponseError as exc:
            text = str(exc)
            if "NOGROUP" in text and self.daemon:
                self._group_ready = False
                self._ensure_group()
                return fn(*args, **kwargs)
            raise self._explain(what, text) from None
        except (e.ConnectionError, e.TimeoutError) as exc:
            if "DB index is out of range" in str(exc):
                raise self._explain(what, str(exc)) from None
            raise QueueUnavailable(f"cannot reach the Redis queue {self.url} (key {self.key!r}): {exc}") from None

    def _explain(self, what: str, text: str) -> MailmandError:
        if "WRONGTYPE" in text:
            kind = self._type()
            return ConfigError(f"the Redis key {self.key!r} at {self.url} holds a {kind}, not a stream: "
                               "choose another name, or delete that key", f"{KEY}.name")
        if "DB index is out of range" in text or "invalid DB index" in text:
            return ConfigError(f"Redis at {self.url} has no such database ({text})", f"{KEY}.db")
        if "NOAUTH" in text or "WRONGPASS" in text:
            return ConfigError(f"Redis at {self.url} refused the credentials ({text})", f"{KEY}.password")
        return QueueError(f"Redis {what} failed on {self.url} key {self.key!r}: {text}")

    def _type(self) -> str:
        try:
            kind = self._r.type(self.key)
        except self._errors.RedisError:
            return "value of another type"
        return kind.decode() if isinstance(kind, bytes) else str(kind)

    # -- producers -----------------------------------------------------------

    def put(self, record: dict[str, Any]) -> None:
        # One XADD: the entry is whole or absent. It returns once Redis replied;
        # what survives a Redis crash then depends on its appendfsync (README).
        data = json.dumps(record, separators=(",", ":")).encode("utf-8")
        self._call("XADD", self._r.xadd, self.key, {FIELD: data})

    def put_many(self, records: list[dict[str, Any]]) -> None:
        # One round trip, in MULTI/EXEC: every entry or none (with appendfsync always,
        # Redis syncs its log once for the lot before it replies).
        if not records:
            return
        pipe = self._r.pipeline(transaction=True)
        for record in records:
            pipe.xadd(self.key, {FIELD: json.dumps(record, separators=(",", ":")).encode("utf-8")})
        self._call("XADD", pipe.execute)

    # -- the daemon ----------------------------------------------------------

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From id 0: entries producers added before any daemon ever ran are read too.
            self._r.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except self._errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        else:
            if self._had_group:
                self._lost("its consumer group was gone (made again)")
        self._group_ready = self._had_group = True

    def _lost(self, what: str) -> None:
        log.warning("the Redis queue %s key %r lost its state: %s. Redis restarted without its data, or the "
                    "key was deleted or flushed: messages queued and not yet ingested may be lost. Check "
                    "Redis persistence (appendonly yes, appendfsync; docs/redis.md)", self.url, self.key, what)

    def _check_stream(self) -> None:
        """Find a stream that went back in time: its entries-added counter (Redis 7)
        only grows, unless Redis came back from older data."""
        try:
            info = self._r.xinfo_stream(self.key)
        except self._errors.ResponseError:
            return  # no stream (the group check says so) or no XINFO
        added = int(info.get("entries-added", 0) or 0)
        if added < self._added:
            self._lost(f"the stream's entries-added went back from {self._added} to {added}")
        self._added = added

    def check(self) -> None:
        """At daemon start: the key is a stream (or absent), the credentials and db work.
        An unreachable Redis is not an error here: the daemon starts, delivers
        what its store holds, and ingest retries (and says so, once)."""
        try:
            kind = self._call("TYPE", self._r.type, self.key)
        except QueueUnavailable:
            return
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind not in ("stream", "none"):
            raise ConfigError(f"the Redis key {self.key!r} at {self.url} holds a {kind}, not a stream: "
                              "choose another name, or delete that key", f"{KEY}.name")
        self._call("XGROUP CREATE", self._ensure_group)
        self._warn_if_volatile()

    def _warn_if_volatile(self) -> None:
        try:
            conf = self._r.config_get("appendonly") | self._r.config_get("save")
        except self._errors.RedisError:  # CONFIG may be renamed or not permitted: nothing to say
            return
        if str(conf.get("appendonly", "")).lower() == "no" and not str(conf.get("save", "")).strip():
            log.warning("Redis at %s keeps nothing on disk (appendonly no, save \"\"): a Redis restart "
                        "loses every message not yet ingested (durability: docs/redis.md)", self.url)

    def resume(self) -> int:
        """Entries pending on us are read again first; the only daemon on the
        stream (`exclusive`) first takes over every other consumer's."""
        self._pel_from = "0"
        self._buffer.clear()
        try:
            self._call("XGROUP CREATE", self._ensure_group)
            if self.exclusive:
                self._claim(0)
            mine = self._call("XPENDING", self._r.xpending_range, self.key, GROUP, "-", "+", 1_000_000,
                              self.consumer)
        except QueueUnavailable:
            return 0  # read at the first take once Redis is back (ingest says it is down)
        return len(mine)

    def _claim(self, min_idle: float) -> int:
        """Move entries idle longer than `min_idle` seconds, on any consumer,
        to us (JUSTID: not counted as a delivery; the read that follows is)."""
        start, claimed = "0-0", 0
        while True:
            reply = self._call("XAUTOCLAIM", self._r.xautoclaim, self.key, GROUP, self.consumer,
                               int(min_idle * 1000), start, 1000, justid=True)
            ids = list(reply)  # with JUSTID, redis-py returns the claimed ids alone (no cursor)
            claimed += len(ids)
            if len(ids) < 1000:
                break
            ms, _, seq = _s(ids[-1]).partition("-")
            start = f"{ms}-{int(seq) + 1}"  # the start is inclusive: go on after the last one
        if claimed:
            self._pel_from = "0"
        return claimed

    def forget_consumers(self, live: set[str]) -> list[str]:
        gone = []
        try:
            self._call("XGROUP CREATE", self._ensure_group)
            for c in self._call("XINFO CONSUMERS", self._r.xinfo_consumers, self.key, GROUP):
                name = _s(c.get("name"))
                if name == self.consumer or name in live:
                    continue
                # Its pending entries first: DELCONSUMER would drop them from the group.
                pending = self._call("XPENDING", self._r.xpending_range, self.key, GROUP, "-", "+", 1_000_000, name)
                ids = [row["message_id"] for row in pending]
                for i in range(0, len(ids), 1000):
                    self._call("XCLAIM", self._r.xclaim, self.key, GROUP, self.consumer, 0, ids[i:i + 1000],
                               justid=True)
                if ids:
                    self._pel_from = "0"  # read again from what is pending on us
                self._call("XGROUP DELCONSUMER", self._r.xgroup_delconsumer, self.key, GROUP, name)
                gone.append(name)
        except QueueUnavailable:
            return gone  # Redis away: the idle ones are forgotten by a later read (_forget_idle_consumers)
        return gone

    def _forget_idle_consumers(self) -> None:
        """Consumers of daemons that are gone, with nothing pending: out of `status`."""
        for c in self._call("XINFO CONSUMERS", self._r.xinfo_consumers, self.key, GROUP):
            name = _s(c.get("name"))
            if name != self.consumer and int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > self.lease * 1000:
                self._call("XGROUP DELCONSUMER", self._r.xgroup_delconsumer, self.key, GROUP, name)

    def _read(self, count: int, block: float | None) -> list[Item]:
        self._call("XGROUP CREATE", self._ensure_group)
        self._retry_acks()
        if self.daemon and time.monotonic() >= self._claim_after:
            # Take over what a dead daemon left pending, at most every lease/4.
            self._claim_after = time.monotonic() + max(1.0, self.lease / 4)
            self._call("XINFO STREAM", self._check_stream)
            if self._claim(self.lease):
                log.info("took over stream entries left pending longer than the lease (%.0fs) by another daemon",
                         self.lease)
            self._forget_idle_consumers()
        if self._pel_from is not None:
            reply = self._call("XREADGROUP", self._r.xreadgroup, GROUP, self.consumer, {self.key: self._pel_from},
                               count)
            entries = reply[0][1] if reply else []
            if entries:
                self._pel_from = _s(entries[-1][0])
                held = {item.token for item in self._buffer} | set(self._unacked)
                gone = [eid for eid, fields in entries if not fields]  # deleted while pending on us
                if gone:
                    self._call("XACK", self._r.xack, self.key, GROUP, *gone)
                return self._items([(e, f) for e, f in entries if f and e not in held], redelivered=True)
            self._pel_from = None
        ms = None if block is None else max(1, int(block * 1000))
        reply = self._call("XREADGROUP", self._r.xreadgroup, GROUP, self.consumer, {self.key: ">"}, count, ms)
        return self._items(reply[0][1] if reply else [], redelivered=False)

    def _items(self, entries: list[tuple[bytes, dict[bytes, bytes]]], redelivered: bool) -> list[Item]:
        times: dict[bytes, int] = {}
        if redelivered and entries:
            rows = self._call("XPENDING", self._r.xpending_range, self.key, GROUP, entries[0][0],
                              entries[-1][0], 2 * len(entries) + len(self._buffer), self.consumer)
            times = {row["message_id"]: row["times_delivered"] for row in rows}
        items = []
        for eid, fields in entries:
            raw = fields.get(FIELD)
            n = times.get(eid, 1)
            if raw is None:
                items.append(Item(eid, None, json.dumps({k.decode(errors="replace"): v.decode(errors="replace")
                                                          for k, v in fields.items()}).encode(),
                                  f"stream entry {eid.decode()} has no {FIELD.decode()!r} field"))
            elif n > MAX_DELIVERIES:
                items.append(Item(eid, None, raw, f"stream entry {eid.decode()} was delivered {n} times "
                                  f"without being stored (more than {MAX_DELIVERIES}: a daemon may have died "
                                  "on it each time)"))
            else:
                try:
                    items.append(Item(eid, json.loads(raw), raw))
                except (ValueError, UnicodeDecodeError) as exc:
                    items.append(Item(eid, None, raw, f"not valid JSON: {exc}"))
        return items

    def take(self, limit: int) -> list[Item]:
        items: list[Item] = []
        while self._buffer and len(items) < limit:
            items.append(self._buffer.popleft())
        if len(items) < limit:
            items.extend(self._read(limit - len(items), None))
            while self._buffer and len(items) < limit:
                items.append(self._buffer.popleft())
        return items

    def wait(self, timeout: float) -> bool:
        # The blocking read is the wake-up: what it returns is pending on us and
        # waits in the buffer for the take that follows. It blocks MAX_BLOCK at
        # a time, so that wake() is heard between two reads.
        deadline = time.monotonic() + timeout
        while not self._buffer:
            if self._woken.is_set():
                self._woken.clear()
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._buffer.extend(self._read(READ, min(left, MAX_BLOCK)))
        return True

    def wake(self) -> None:
        self._woken.set()

    def ack(self, items: list[Item]) -> None:
        self._unacked.extend(item.token for item in items)
        self._retry_acks()

    def _retry_acks(self) -> None:
        if not self._unacked:
            return
        ids, self._unacked = self._unacked, []
        pipe = self._r.pipeline(transaction=True)
        pipe.xack(self.key, GROUP, *ids)
        pipe.xdel(self.key, *ids)
        try:
            self._call("XACK", pipe.execute)
        except QueueError:
            # Committed in the store already: ack them at the next chance, not
            # by reading them again (each re-read counts as a delivery).
            self._unacked = ids + self._unacked
            raise

    def release(self, items: list[Item]) -> None:
        # They stay pending on us in Redis; offer them again from the buffer.
        self._buffer.extendleft(reversed(items))

    def pending(self) -> int:
        return int(self._call("XLEN", self._r.xlen, self.key))

    def info(self) -> QueueInfo:
        length = int(self._call("XLEN", self._r.xlen, self.key))
        pending, consumers = 0, []
        groups = self._call("XINFO GROUPS", self._r.xinfo_groups, self.key) if length or self._exists() else []
        for g in groups:
            if _s(g.get("name")) == GROUP:
                pending = int(g.get("pending", 0))
                for c in self._call("XINFO CONSUMERS", self._r.xinfo_consumers, self.key, GROUP):
                    consumers.append({"name": _s(c.get("name")), "pending": int(c.get("pending", 0)),
                                      "idle_s": round(int(c.get("idle", 0)) / 1000, 1)})
        # Acked entries are deleted: the stream's length is what is not yet ingested.
        return QueueInfo(engine="redis", where=f"{self.url} key {self.key}", waiting=length,
                         length=length, pending=pending, consumers=consumers)

    def probe(self) -> str:
        """PING (which the connection's AUTH and SELECT precede), then the key: a stream
        or nothing yet, and the daemons' consumer group on it."""
        self._call("PING", self._r.ping)
        kind = _s(self._call("TYPE", self._r.type, self.key))
        if kind == "none":
            return "PING answered; no stream yet (the first message or daemon makes it)"
        if kind != "stream":
            raise ConfigError(f"the Redis key {self.key!r} at {self.url} holds a {kind}, not a stream: "
                              "choose another name, or delete that key", f"{KEY}.name")
        length = int(self._call("XLEN", self._r.xlen, self.key))
        group = next((g for g in self._call("XINFO GROUPS", self._r.xinfo_groups, self.key)
                      if _s(g.get("name")) == GROUP), None)
        if group is None:
            return f"PING answered; stream of {length} entries, no group {GROUP!r} yet (the daemon makes it)"
        return (f"PING answered; stream of {length} entries, group {GROUP!r} with {int(group.get('consumers', 0))} "
                f"consumer(s), {int(group.get('pending', 0))} pending")

    def _exists(self) -> bool:
        return bool(self._call("EXISTS", self._r.exists, self.key))

    def find(self, message_id: str) -> Found | None:
        needle = json.dumps(message_id).encode()
        pending: set[bytes] | None = None
        start = "-"
        while True:
            entries = self._call("XRANGE", self._r.xrange, self.key, start, "+", 1000)
            for eid, fields in entries:
                raw = fields.get(FIELD, b"")
                if needle not in raw:
                    continue
                try:
                    found = json.loads(raw).get("id") == message_id
                except (ValueError, AttributeError, UnicodeDecodeError):
                    continue
                if found:
                    if pending is None:
                        rows = self._call("XPENDING", self._r.xpending_range, self.key, GROUP, eid, eid, 1) \
                            if self._has_group() else []
                        pending = {row["message_id"] for row in rows}
                    return Found(id=message_id, where=f"{self.url} key {self.key}", entry=_s(eid),
                                 taken=eid in pending)
            if len(entries) < 1000:
                return None
            start = "(" + _s(entries[-1][0])

    def _has_group(self) -> bool:
        return any(_s(g.get("name")) == GROUP for g in self._call("XINFO GROUPS", self._r.xinfo_groups, self.key))

    def close(self) -> None:
        if self.daemon and (self._buffer or self._unacked):
            try:
                self._retry_acks()
                self._hand_back([item.token for item in self._buffer])
            except QueueError as exc:  # Redis away: they are taken over after the lease all the same
                log.debug("could not hand back pending entries at close: %s", exc)
        self._r.close()

    def _hand_back(self, ids: list[bytes]) -> None:
        """Entries read but not stored, at a graceful stop: mark them idle for
        longer than the lease (XCLAIM ... IDLE), so that the next XAUTOCLAIM
        of any daemon takes them over at once instead of after the lease."""
        if ids:
            self._call("XCLAIM", self._r.xclaim, self.key, GROUP, self.consumer, 0, ids,
                       idle=int(self.lease * 1000) + 1, justid=True)
            self._buffer.clear()


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
