"""Signed webhooks: each configured URL is POSTed the event log, in order.

The store keeps each webhook's place in the log under a lease, as it keeps
messages: one daemon at a time sends a webhook its events (a `Sender`, a
thread of its own, so a slow or dead endpoint never holds up delivery). A
batch is at most BATCH events, a JSON array; a 2xx answer moves the place
past it (fenced by the lease's token); anything else, or no answer within
`timeout`, is tried again with backoff, with the same events and so the same
ids, until they are `events.max-time` old. At least once: a receiver
deduplicates by event id.

Each POST carries `Mailmand-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>" under the webhook's secret>`, the shape Stripe uses; `verify`
checks one. The secret is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import socket
import ssl
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import policy
from .config import Config, EventsConfig, WebhookConfig
from .config.values import mask_url
from .errors import StoreError
from .repeats import Repeats
from .stores.base import Store
from .stores.model import EventType, HookClaim
from .version import __version__

log = logging.getLogger(__name__)

HEADER = "Mailmand-Signature"
BATCH = 100  # events per POST, at most
POLL = 1.0  # seconds between looks at the log when it has nothing new
LEASE_MIN = 60.0  # seconds a webhook's lease lasts at least (and 3 × its timeout, if longer)
TOLERANCE = 300  # seconds: how old a signature `verify` accepts (Stripe's default)
ANSWER_MAX = 64 * 1024  # bytes of an answer's body read (and dropped): it says nothing we use
PENDING_MAX = 1_000_000  # `mailmand_webhook_pending` counts up to this many


def sign(secret: str, body: bytes, t: int) -> str:
    """The Mailmand-Signature header for `body` sent at unix time `t`."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, tolerance: float = TOLERANCE, now: float | None = None) -> bool:
    """True if `header` is a signature of `body` under `secret`, made within
    `tolerance` seconds of `now`: what a receiver written in Python checks."""
    parts = [p.partition("=") for p in header.split(",")]
    stamps = [v for k, _, v in parts if k.strip() == "t"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit():
        return False
    t = int(stamps[0])
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign(secret, body, t).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, v.strip()) for k, _, v in parts if k.strip() == "v1")


def shown(url: str) -> str:
    """A webhook's URL as logs, metrics and the store name it: any password in it masked."""
    return mask_url(url)


class Poster:
    """POSTs to one URL over a connection kept open between batches (http.client:
    no redirects followed, so a 3xx is an answer that did not acknowledge).
    TLS is verified (the system's CAs, or the webhook's `ca-file`)."""

    def __init__(self, hook: WebhookConfig) -> None:
        parts = urlsplit(hook.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        self.timeout = hook.timeout
        self.auth = None
        if parts.username is not None:  # credentials in the URL: HTTP Basic, as a browser would
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.auth = "Basic " + b64encode(pair.encode()).decode()
        self.context = ssl.create_default_context(cafile=str(hook.ca_file) if hook.ca_file else None) \
            if self.https else None
        self._conn: http.client.HTTPConnection | None = None  # kept open between POSTs
        self._busy: http.client.HTTPConnection | None = None  # the one a POST is using

    def _connect(self) -> http.client.HTTPConnection:
        if self.context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """(status, reason); raises OSError or http.client.HTTPException when no answer came."""
        if self.auth:
            headers = {**headers, "Authorization": self.auth}
        kept = self._conn is not None
        try:
            return self._post(body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not kept:
                raise
        return self._post(body, headers)  # the server had closed the kept connection: once more, on a new one

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        conn = self._busy = self._conn or self._connect()
        self._conn = None
        try:
            conn.request("POST", self.path, body, headers)
            answer = conn.getresponse()
            answer.read(ANSWER_MAX)
        except BaseException:
            conn.close()
            raise
        if answer.will_close or not answer.isclosed():  # not all of it read: not reusable
            conn.close()
        else:
            self._conn = conn
        return answer.status, answer.reason

    def abort(self) -> None:
        """Cut short the POST under way, from another thread (stopping)."""
        sock = getattr(self._busy, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it, which close() would not
            except OSError:
                pass

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Counts:
    failures: int = 0  # POSTs that were not acknowledged (mailmand_webhook_failures_total)


class Sender:
    """One webhook's worker: while this daemon holds the webhook's lease, read the
    next batch past its place, POST it, and move the place (or back off)."""

    def __init__(self, store: Store, hook: WebhookConfig, events: EventsConfig, owner: str) -> None:
        self.store = store
        self.hook = hook
        self.cfg = events
        self.owner = owner
        self.key = shown(hook.url)  # what the store and the metrics call it
        self.types = [EventType(t) for t in hook.types]
        self.lease = max(LEASE_MIN, 3 * hook.timeout)
        self.counts = Counts()
        self._poster = Poster(hook)
        self._stop = threading.Event()
        self._down = Repeats(log, f"webhook {self.key}")
        self._store_down = Repeats(log, f"webhook {self.key}: store")
        self._registered = False
        self._gave_up: tuple[int, int] | None = None  # the place whose batch was last reported as too old
        self._claim: HookClaim | None = None
        self._renew_at = 0.0  # monotonic: when the lease is renewed next
        self._thread = threading.Thread(target=self._run, name="mailmand-webhook", daemon=True)

    def start(self) -> Sender:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop now (a POST in flight is cut short: its batch is sent again), and hand the lease back."""
        self._stop.set()
        self._poster.abort()
        if self._thread.is_alive():
            self._thread.join(self.hook.timeout + 5)
        self._poster.close()
        if self._claim is not None:
            try:
                self.store.webhook_release(self.key, self.owner)
            except StoreError:
                pass  # the lease runs out instead

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.step(time.time())
                self._store_down.cleared()
            except StoreError as exc:
                self._store_down.failed("cannot read or mark the log (trying again): %s", exc)
                wait = 5 * POLL
            except Exception:  # the worker must outlive a bad moment; delivery is not its business
                log.exception("webhook %s: unexpected error", self.key)
                wait = 5 * POLL
            if wait:
                self._stop.wait(wait)

    def step(self, now: float) -> float:
        """One round: take or renew the lease, then send the next batch if it is
        time. Returns how long to wait before the next round (0: at once)."""
        if not self._registered:
            self.store.webhook_register(self.key)  # a new webhook starts at the end of the log
            self._registered = True
        if self._claim is None or time.monotonic() >= self._renew_at:
            self._claim = self.store.webhook_claim(self.key, self.owner, now, self.lease)
            self._renew_at = time.monotonic() + self.lease / 3
            if self._claim is None:
                return self.lease / 4  # another daemon sends this webhook's events
        claim = self._claim
        if claim.retry_at > now:
            return min(claim.retry_at - now, POLL)
        events, upto = self.store.events_json(claim.after, self.types, BATCH)
        fresh = [text for at, text in events if at >= now - self.cfg.max_time]
        if len(fresh) < len(events) and self._gave_up != claim.after:  # said once per batch, not per retry
            self._gave_up = claim.after
            log.warning("webhook %s: gave up on %d event(s) older than events.max-time (%gs)", self.key,
                        len(events) - len(fresh), self.cfg.max_time)
        if not fresh:  # nothing new, or only what it does not take, or only what is too old
            if upto != claim.after:
                self._mark(self.store.webhook_done(self.key, self.owner, claim.token, upto), upto, 0, 0.0)
            return POLL
        if self._post(fresh, now):
            self._mark(self.store.webhook_done(self.key, self.owner, claim.token, upto), upto, 0, 0.0)
            return 0.0 if len(events) == BATCH else POLL
        self.counts.failures += 1
        retry_at = now + policy.backoff(claim.fails + 1, self.cfg.backoff)
        self._mark(self.store.webhook_failed(self.key, self.owner, claim.token, retry_at), claim.after,
                   claim.fails + 1, retry_at)
        return 0.0

    def _mark(self, kept: bool, after: tuple[int, int], fails: int, retry_at: float) -> None:
        """Follow our own write; a write the fence refused means another daemon holds the lease now."""
        if kept and self._claim is not None:
            self._claim = HookClaim(self._claim.token, after, fails, retry_at)
        else:
            self._claim = None

    def _post(self, events: Sequence[str], now: float) -> bool:
        """POST the events (each its JSON text) as one array; True when acknowledged."""
        body = ("[" + ",".join(events) + "]").encode()
        headers = {"Content-Type": "application/json", "User-Agent": f"mailmand/{__version__}",
                   HEADER: sign(self.hook.secret or "", body, int(now))}
        try:
            status, reason = self._poster.post(body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self._down.failed("POST of %d event(s) failed, retrying with backoff: %s", len(events),
                              _why(exc))
            return False
        if 200 <= status < 300:
            if self._down.cleared():
                log.info("webhook %s: acknowledged again", self.key)
            return True
        self._down.failed("POST of %d event(s) answered %d %s, retrying with backoff", len(events), status, reason)
        return False


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


class Webhooks:
    """The daemon's webhook senders, one per configured webhook; a reload starts,
    stops or restarts the ones whose settings changed."""

    def __init__(self, store: Store, events: EventsConfig, owner: str) -> None:
        self.store = store
        self.owner = owner
        self.cfg = events
        self.senders: dict[WebhookConfig, Sender] = {}
        self.failures: dict[str, int] = {}  # per URL, kept across restarts of its sender

    def start(self) -> Webhooks:
        self._apply(self.cfg)
        return self

    def configure(self, cfg: Config) -> None:
        """A reload: webhooks added start, those gone or changed stop (a changed one starts anew)."""
        self._apply(cfg.server.events)

    def _apply(self, events: EventsConfig) -> None:
        if (events.max_time, events.backoff) != (self.cfg.max_time, self.cfg.backoff):
            self.stop()  # every sender anew, under the new settings
        self.cfg = events
        for hook in list(self.senders):
            if hook not in events.webhooks:  # gone, or its settings changed: a new sender below
                self._retire(self.senders.pop(hook))
        for hook in events.webhooks:
            if hook not in self.senders:
                sender = Sender(self.store, hook, events, self.owner)
                sender.counts.failures = self.failures.get(sender.key, 0)
                self.senders[hook] = sender.start()
                log.info("webhook %s: sending %s events", sender.key, ", ".join(hook.types) or "all")

    def _retire(self, sender: Sender) -> None:
        sender.stop()
        self.failures[sender.key] = sender.counts.failures

    def stop(self) -> None:
        for sender in self.senders.values():
            self._retire(sender)
        self.senders = {}

    def collector(self) -> WebhookCollector:
        return WebhookCollector(lambda: list(self.senders.values()))


class WebhookCollector(Collector):
    """`mailmand_webhook_pending{url}` (read from the store at scrape time) and
    `mailmand_webhook_failures_total{url}` (counted by the senders)."""

    def __init__(self, senders: Callable[[], list[Sender]]) -> None:
        self.senders = senders
        self._store_down = Repeats(log, "metrics: webhook backlog unreadable")

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        return (GaugeMetricFamily("mailmand_webhook_pending",
                                  f"Events not yet acknowledged by the webhook (counted up to {PENDING_MAX:,}).",
                                  labels=["url"]),
                CounterMetricFamily("mailmand_webhook_failures", "POSTs the webhook did not acknowledge.",
                                    labels=["url"]))

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        pending, failures = self._families()
        senders = self.senders()
        for sender in senders:
            failures.add_metric([sender.key], sender.counts.failures)
        yield failures
        try:
            for sender in senders:
                pending.add_metric([sender.key], sender.store.webhook_pending(sender.key, sender.types, PENDING_MAX))
        except StoreError as exc:
            self._store_down.failed("cannot count webhook backlogs for /metrics: %s", exc)
            return
        self._store_down.cleared()
        yield pending
