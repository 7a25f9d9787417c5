"""The submission listener's limits, wired into asyncio and aiosmtpd (the counts live in `anvil.py`).

- `Gate` is the protocol each accepted connection gets first: it asks the
  anvil, and either answers 421/554 and closes (cheaply: no SMTP session is
  built for a refused client) or hands the transport to an SMTP session;
- `GuardedSmtp` is aiosmtpd's SMTP with a greeting deadline (HELO/EHLO
  within `greeting-timeout`, else 421 4.4.2), AUTH lockouts (no password is
  checked while the client is locked out; a refused one is answered only
  when its lockout ends) and a close after `auth-failures` on one connection;
- `Guard.loop_errors` takes the event loop's errors: a failing accept (out
  of file handles) is logged once, then summarised, instead of a traceback
  each time asyncio retries it.

Each limit's refusal is a protocol reply, logged once, then summarised.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult

from .anvil import Anvil, Limits, connection_budget
from .repeats import Repeats

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import SubmissionConfig

log = logging.getLogger("mailmand.submission")

# RFC 4954 §6: 454 4.7.0 "Temporary authentication failure"; RFC 3463: 4.4.2 "bad connection".
LOCKED_OUT = "454 4.7.0 Too many failed logins from {client}, try again in {wait}s"
TOO_MANY_FAILURES = "421 4.7.0 Too many failed logins, closing connection"
GREETING_TIMEOUT = "421 4.4.2 {host} Error: timeout exceeded"


def limits_of(sub: SubmissionConfig, budget: int) -> Limits:
    nets = None if sub.clients is None else tuple(ipaddress.ip_network(n) for n in sub.clients)
    return Limits(max_connections=min(sub.max_connections, budget), per_client=sub.max_connections_per_client,
                  auth_failures=sub.auth_failures, clients=nets)


class Guard:
    """One listener's limits: its anvil, and the lines it logs."""

    def __init__(self, sub: SubmissionConfig) -> None:
        self.budget = connection_budget(sub.max_connections)  # the process's file handles, measured once
        self.anvil = Anvil(limits_of(sub, self.budget))
        self.greeting_timeout = sub.greeting_timeout
        self._refused = Repeats(log, "submission: connections refused")
        self._lockouts = Repeats(log, "submission: AUTH lockouts")
        self._accept = Repeats(log, "submission: accepting connections")
        self.warn_budget(sub)

    def configure(self, sub: SubmissionConfig) -> None:
        """A reload: the new limits apply to the next connection and the next AUTH."""
        self.anvil.limits = limits_of(sub, self.budget)
        self.greeting_timeout = sub.greeting_timeout
        self.warn_budget(sub)

    def warn_budget(self, sub: SubmissionConfig) -> None:
        if self.budget < sub.max_connections:
            log.warning("submission: max-connections %d lowered to %d: the process may open too few files "
                        "(ulimit -n) to hold more and keep handles for delivery; raise LimitNOFILE",
                        sub.max_connections, self.budget)

    # -- what the sessions report

    def refused(self, host: str, reply: str) -> None:
        self._refused.failed("submission: refused a connection from %s: %s", host, reply)

    def admitted(self) -> None:
        self._accept.cleared()
        self._refused.cleared()

    def locked_out(self, client: str, lockout: float, count: int) -> None:
        self._lockouts.failed("submission: %s locked out of AUTH for %.0fs after %d failed login(s)",
                              client, lockout, count)

    # -- the event loop's errors

    def loop_errors(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            exc = context.get("exception")
            self._accept.failed("submission: cannot accept connections, asyncio retries each second: %s",
                                exc or context.get("message"))
            return
        loop.default_exception_handler(context)


class Gate(asyncio.Protocol):
    """The first protocol of every connection: admit it to an SMTP session, or refuse it."""

    def __init__(self, guard: Guard, session: Callable[[str], SMTP]) -> None:
        self.guard = guard
        self.session = session  # builds the SMTP session for an admitted client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else "unknown"
        refusal, client = self.guard.anvil.admit(host)
        if refusal is not None:
            self.guard.refused(host, refusal)
            transport.write(refusal.encode() + b"\r\n")
            transport.close()
            return
        self.guard.admitted()
        try:
            smtp = self.session(client)
        except BaseException:
            self.guard.anvil.release(client)
            transport.close()
            raise
        transport.set_protocol(smtp)
        smtp.connection_made(transport)


class GuardedSmtp(SMTP):
    """aiosmtpd's SMTP session under the listener's limits. The `authenticator`
    given checks credentials only; the lockouts are kept here, around it."""

    def __init__(self, guard: Guard, client: str, *args: Any, authenticator: Any = None, **kwargs: Any) -> None:
        self.guard = guard
        self.client = client
        self.auth_failures = 0  # on this connection
        self._counted = True  # admitted by the Gate: released once, when the connection is lost
        self._greeting: asyncio.TimerHandle | None = None
        self._hold = 0.0  # seconds to wait before the next reply (a refused password's)
        self._check = authenticator
        super().__init__(*args, authenticator=self._guarded if authenticator else None, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # the connection (STARTTLS calls this again with the TLS transport)
            self._greeting = self.loop.call_later(self.guard.greeting_timeout, self._greeting_timed_out)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._greeting is not None:
            self._greeting.cancel()
        if self._counted:
            self._counted = False
            self.guard.anvil.release(self.client)
        super().connection_lost(error)

    def _greeting_timed_out(self) -> None:
        if isinstance(self.transport, asyncio.WriteTransport):
            self.guard.refused(self.client, "no HELO/EHLO within greeting-timeout")
            self.transport.write(GREETING_TIMEOUT.format(host=self.hostname).encode() + b"\r\n")
            self.transport.close()

    def _greeted(self) -> None:
        if self._greeting is not None:
            self._greeting.cancel()
            self._greeting = None

    async def smtp_HELO(self, hostname: str) -> None:
        await super().smtp_HELO(hostname)
        if hostname:
            self._greeted()

    async def smtp_EHLO(self, hostname: str) -> None:
        await super().smtp_EHLO(hostname)
        if hostname:
            self._greeted()

    async def smtp_AUTH(self, arg: str) -> None:
        await super().smtp_AUTH(arg)
        if self.auth_failures >= self.guard.anvil.limits.auth_failures and self.transport is not None:
            await self.push(TOO_MANY_FAILURES)
            self.transport.close()

    async def push(self, status: Any) -> None:
        if self._hold:
            hold, self._hold = self._hold, 0.0
            await asyncio.sleep(hold)  # a refused password is answered once its lockout has passed
        await super().push(status)

    def _guarded(self, server: SMTP, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        wait = self.guard.anvil.locked(self.client)
        if wait:  # not checked: a guess made now tells nothing
            self.auth_failures += 1
            return AuthResult(success=False, handled=False,
                              message=LOCKED_OUT.format(client=self.client, wait=math.ceil(wait)))
        result: AuthResult = self._check(server, session, envelope, mechanism, data)
        if not result.success:
            self.auth_failures += 1
            lockout, count = self.guard.anvil.failed(self.client)
            self._hold = lockout
            self.guard.locked_out(self.client, lockout, count)
        return result
