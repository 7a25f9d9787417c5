"""The submission listener's limits: who may connect, how many at once, how often AUTH may fail.

Postfix keeps these counts in anvil(8); here one `Anvil` per listener, in
its event loop's thread (no lock), answers at connect and at each AUTH:

- `clients`: the networks that may connect at all (Postfix's mynetworks);
  anyone else gets 554 and is closed;
- `max-connections` in all and `max-connections-per-client`: past either, a
  new connection gets 421 4.7.0 and is closed
  (smtpd_client_connection_count_limit); the total is also held below the
  file handles the process has, less a reserve kept for delivery (the relay,
  the store, the spool) and for a batch of accepts: a flood of idle
  clients cannot starve them;
- AUTH failures lock the client's address out for a time that doubles with
  each failure (1 s, 2 s, 4 s, ... up to LOCKOUT_MAX), across its
  connections: no password is checked for it meanwhile (454 4.7.0), and a
  new connection from it gets 421. The failing connection itself hears its
  535 only when that time has passed, and is closed after `auth-failures`.
  A client's failures are forgotten after FORGET seconds without one.

A client is its IPv4 address, or its IPv6 /64 (a host is given a /64, and
an attacker would take a new address from it for every try).
"""

from __future__ import annotations

import ipaddress
import os
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FAIL_DELAY = 1.0  # seconds: the first failure's lockout, doubled at each one after
LOCKOUT_MAX = 900.0  # seconds: the longest lockout (15 minutes)
FORGET = 3600.0  # seconds without a failure after which a client's failures are forgotten
TRACKED = 100_000  # clients whose failures are remembered at most (the oldest go first)
# File handles kept for everything but the listener: relay sessions, store and
# spool connections, logs, the metrics endpoint. At most a quarter of the limit.
RESERVE = 256
# asyncio accepts up to `backlog` connections at each turn of its loop, and a
# connection is admitted or refused two turns after its accept (a task, then
# the transport): about three batches hold a file handle each meanwhile.
ACCEPT_BATCH = 32
IN_FLIGHT = 3 * ACCEPT_BATCH


@dataclass(frozen=True)
class Limits:
    max_connections: int
    per_client: int
    auth_failures: int
    clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None  # None: anyone


def client_of(host: str) -> str:
    """The key a client is counted under: its IPv4 address (an IPv4-mapped IPv6 one
    unwrapped), or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # not an IP (a Unix socket): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def connection_budget(wanted: int, limit: int | None = None, open_now: int | None = None) -> int:
    """How many client connections the listener may hold: `wanted`, or fewer when the
    process's file-handle limit (RLIMIT_NOFILE) less those already open and the
    reserve cannot hold that many."""
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return wanted
    if open_now is None:
        try:
            open_now = len(os.listdir("/proc/self/fd"))
        except OSError:  # no /proc: assume a daemon's usual count
            open_now = 64
    reserve = min(RESERVE, limit // 4)
    return max(1, min(wanted, limit - open_now - reserve - IN_FLIGHT))


@dataclass
class _Failures:
    count: int = 0
    until: float = 0.0  # monotonic: no password is checked for this client before


class Anvil:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.total = 0
        self._per_client: dict[str, int] = {}
        self._failures: OrderedDict[str, _Failures] = OrderedDict()  # by last failure, oldest first

    # -- connections

    def admit(self, host: str) -> tuple[str | None, str]:
        """At connect: (None, client) when admitted (and counted: `release` it when it closes),
        else (the reply to send before closing, client)."""
        client = client_of(host)
        nets = self.limits.clients
        if nets is not None and not _listed(host, nets):
            return f"554 5.7.1 {host} may not submit mail here", client
        if self.total >= self.limits.max_connections:
            return "421 4.7.0 Too many connections, try again later", client
        if self._per_client.get(client, 0) >= self.limits.per_client:
            return f"421 4.7.0 Too many connections from {client}, try again later", client
        wait = self.locked(client)
        if wait:
            return f"421 4.7.0 Too many failed logins from {client}, try again in {wait:.0f}s", client
        self.total += 1
        self._per_client[client] = self._per_client.get(client, 0) + 1
        return None, client

    def release(self, client: str) -> None:
        self.total -= 1
        left = self._per_client[client] - 1
        if left:
            self._per_client[client] = left
        else:
            del self._per_client[client]

    def connections(self, client: str) -> int:
        return self._per_client.get(client, 0)

    # -- AUTH

    def locked(self, client: str) -> float:
        """Seconds until a password from `client` is checked again (0: now)."""
        got = self._failures.get(client)
        if got is None:
            return 0.0
        now = self.clock()
        if now - got.until > FORGET:
            del self._failures[client]
            return 0.0
        return max(0.0, got.until - now)

    def failed(self, client: str) -> tuple[float, int]:
        """A password refused: (the lockout it starts, in seconds; the client's failures so far)."""
        now = self.clock()
        got = self._failures.pop(client, None)
        if got is None or now - got.until > FORGET:
            got = _Failures()
        got.count += 1
        lockout = min(LOCKOUT_MAX, FAIL_DELAY * 2 ** min(got.count - 1, 32))
        got.until = now + lockout
        self._failures[client] = got  # now the newest
        while len(self._failures) > TRACKED:
            self._failures.popitem(last=False)
        return lockout, got.count


def _listed(host: str, nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in nets)
