"""Prometheus metrics and /healthz, served by the daemon (prometheus-client).

Names follow Prometheus conventions (base units, `_total` counters) and
postfix_exporter's where they overlap. Two kinds of source:

* events, counted as they happen: the dispatcher and the relay sessions
  report through the observer hook (`mailmand.observe`), which `Metrics`
  implements;
* state, read from the store and the queue when Prometheus scrapes
  (`StateCollector`), never on every dispatch: a scrape every 15 s costs
  three small queries, and the dispatch path costs nothing.

`/healthz` answers 200 when the dispatcher ran within 3 × `interval` and
no part of the daemon is failing; otherwise 503, with each failing part
(`store: ...`, `ingest: ...`). Its body is JSON: `status` (`ok` or
`failing`), `problems`, and `relays`, each relay's state (up or down and
since when, its last reply, its throttle). A relay that is down is not a
503: mail is still accepted, and waits for it or goes to another relay. It answers from what the daemon
already knows (the store's last call, a call waiting too long, the ingest
loop's last failure), never by asking the store: a store gone dark cannot
hold it up. /metrics leaves the store's series out while the store is
failing (the daemon's own calls find when it is back).

The HTTP server (`httpd.py`) holds a few threads, and only for requests
that have arrived whole: idle connections wait in one selector and are
closed after a few seconds.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import observe
from .errors import MailmandError
from .httpd import BoundedWSGIServer, HeadHandler
from .repeats import Repeats
from .stores.model import Status
from .version import __version__

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from .config import Config
    from .queues import Queue
    from .smtp import SendResult
    from .stores.base import Store

log = logging.getLogger(__name__)

OUTCOMES = (Status.SENT, Status.DEFERRED, Status.FAILED, Status.EXPIRED, Status.CANCELLED)
IN_QUEUE = (Status.QUEUED, Status.SENDING, Status.DEFERRED, Status.HELD)
REPLY_CLASSES = ("2xx", "4xx", "5xx", "none")
# Delivery runs from milliseconds (an idle daemon) to hours (retries after an outage).
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
HEALTH_RUNS = 3  # the dispatcher must have run within this many intervals


def reply_class(code: int | None) -> str:
    """2xx, 4xx, 5xx, or none (no answer: a timeout, a dropped or refused connection)."""
    if code is not None and code // 100 in (2, 4, 5):
        return f"{code // 100}xx"
    return "none"


class Metrics(observe.Observer):
    """The event side: counters, the delivery histogram, sessions and relay state."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter("mailmand_messages", "Outcomes recorded by this daemon.", ["status"],
                                registry=registry)
        self.delivery = Histogram("mailmand_delivery_seconds",
                                  "Time from a message's send time to the relay's 250.",
                                  buckets=DELIVERY_BUCKETS, registry=registry)
        self.replies = Counter("mailmand_smtp_replies", "Final SMTP replies to delivery attempts, by class.",
                               ["class"], registry=registry)
        self.connections = Gauge("mailmand_smtp_connections", "Open SMTP sessions to the relay.",
                                 registry=registry)
        build = Gauge("mailmand_build_info", "Always 1; the version is in the label.", ["version"],
                      registry=registry)
        build.labels(__version__).set(1)
        for status in OUTCOMES:  # every series exists from the start, at 0: rate() needs a first sample
            self.messages.labels(status.value)
        for name in REPLY_CLASSES:
            self.replies.labels(name)
        self.last_dispatch = time.monotonic()  # start-up counts as a run

    def dispatching(self) -> None:
        self.last_dispatch = time.monotonic()

    def outcome(self, status: Status, result: SendResult | None, send_time: float) -> None:
        self.last_dispatch = time.monotonic()
        self.messages.labels(status.value).inc()
        if result is None:
            return
        self.replies.labels(reply_class(result.code)).inc()
        if status is Status.SENT:
            self.delivery.observe(max(0.0, result.started + result.duration - send_time))

    def session_opened(self) -> None:
        self.connections.inc()

    def session_closed(self) -> None:
        self.connections.dec()


class StateCollector(Collector):
    """The store and queue side, read at scrape time."""

    def __init__(self, store: Store, queue: Queue, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.queue = queue
        self.clock = clock
        self._store_down = Repeats(log, "metrics: store unreadable")
        self._queue_down = Repeats(log, "metrics: queue unreadable")

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("mailmand_queue_messages", "Messages in the store by state.", labels=["status"]),
            GaugeMetricFamily("mailmand_queue_backlog",
                              "Records in the queue not yet ingested (spool items, stream entries, outbox rows)."),
            GaugeMetricFamily("mailmand_oldest_due_seconds",
                              "Age of the oldest message that is due and unsent (0 when none)."),
        )

    def describe(self) -> Iterable[Any]:
        # Names only: registering must not query the store.
        return self._families()

    def collect(self) -> Iterator[Any]:
        by_status, backlog, oldest = self._families()
        # A source that fails leaves its series out of this scrape (Prometheus
        # then sees them absent) rather than failing the whole scrape; /healthz says why.
        try:
            problem = self.store.problem()
            if problem:  # a failing store would hold the scrape up: leave its series out
                raise MailmandError(problem)
            now = self.clock()
            counts = self.store.counts()
            due = self.store.oldest_due(now)
        except Exception as exc:
            self._store_down.failed("cannot read the store for /metrics: %s", exc)
        else:
            self._store_down.cleared()
            for status in IN_QUEUE:
                by_status.add_metric([status.value], counts.get(status, 0))
            oldest.add_metric([], 0.0 if due is None else max(0.0, now - due))
            yield by_status
            yield oldest
        try:
            pending = self.queue.pending()
        except Exception as exc:
            self._queue_down.failed("cannot read the queue for /metrics: %s", exc)
        else:
            self._queue_down.cleared()
            backlog.add_metric([], pending)
            yield backlog


class RelayCollector(Collector):
    """Each relay's state, read from the dispatcher's fleet (memory, no I/O) at scrape time."""

    def __init__(self, relays: Callable[[], list[dict[str, Any]]]) -> None:
        self.relays = relays

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("mailmand_relay_up", "1 while the relay is up, 0 while it is down (cooling off).",
                              labels=["relay"]),
            GaugeMetricFamily("mailmand_relay_rate_limit",
                              "Messages a second the relay is sent at most now (configured, or less while it "
                              "pushes back); absent when there is no limit.", labels=["relay"]),
            GaugeMetricFamily("mailmand_relay_connection_limit",
                              "Sessions the relay is given at most now (configured, or less while it pushes back).",
                              labels=["relay"]),
        )

    def describe(self) -> Iterable[Any]:
        return self._families()

    def collect(self) -> Iterator[Any]:
        up, rate, connections = self._families()
        for r in self.relays():
            up.add_metric([r["name"]], 1.0 if r["state"] == "up" else 0.0)
            if r.get("rate") is not None:
                rate.add_metric([r["name"]], float(r["rate"]))
            connections.add_metric([r["name"]], float(r["connections"]))
        yield up
        yield rate
        yield connections


class Health:
    """What /healthz answers, from state the daemon keeps (no I/O)."""

    def __init__(self, last_active: Callable[[], float], store: Store, interval: Callable[[], float],
                 parts: Callable[[], list[str]] = list,
                 relays: Callable[[], list[dict[str, Any]]] = list) -> None:
        self.last_active = last_active  # monotonic time of the dispatcher's last run
        self.store = store
        self.interval = interval
        self.parts = parts  # the daemon's other failing parts, "ingest: ..." each
        self.relays = relays  # each relay's state (memory)

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(ok, the JSON body of /healthz): what every listener's /healthz answers."""
        ok, reason = self.check()
        try:
            relays = self.relays()
        except Exception:  # never a reason for /healthz to fail
            log.exception("relay state for /healthz")
            relays = []
        return ok, {"status": "ok" if ok else "failing", "problems": [] if ok else reason.splitlines(),
                    "relays": relays}

    def check(self) -> tuple[bool, str]:
        problems = []
        limit = HEALTH_RUNS * self.interval()
        idle = time.monotonic() - self.last_active()
        if idle > limit:
            problems.append(f"dispatcher has not run for {idle:.0f}s (limit {limit:g}s: 3 x interval)")
        store = self.store.problem()
        if store:
            problems.append(f"store: {_one_line(store)}")
        problems += [_one_line(p) for p in self.parts()]
        return (False, "\n".join(problems)) if problems else (True, "ok")


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or type(text).__name__


class _QuietHandler(HeadHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # a scrape every 15 s is not news


class MetricsServer:
    """The HTTP endpoint: /metrics (Prometheus text format) and /healthz."""

    def __init__(self, listen: str, store: Store, queue: Queue, interval: Callable[[], float],
                 parts: Callable[[], list[str]] = list,
                 relays: Callable[[], list[dict[str, Any]]] = list) -> None:
        self.listen = listen
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.relays = relays
        self.registry.register(StateCollector(store, queue))
        self.registry.register(RelayCollector(relays))
        self.health = Health(lambda: self.metrics.last_dispatch, store, interval, parts, relays)
        self._prometheus = make_wsgi_app(self.registry)
        self._httpd: BoundedWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._previous: observe.Observer | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when 0 was asked)."""
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok, report = self.health.report()
            body = (json.dumps(report, separators=(",", ":")) + "\n").encode()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return self._prometheus(environ, start_response)

    def configure(self, cfg: Config) -> None:
        """A reload: nothing to apply (`interval` is read at each check; `listen` needs a restart)."""

    def start(self) -> MetricsServer:
        host, _, port_text = self.listen.rpartition(":")  # as the configuration validated it
        host, port = host.strip("[]"), int(port_text)
        server_class = type("_Server", (BoundedWSGIServer,), {"address_family": _family(host)})
        try:
            self._httpd = make_server(host, port, self.app, server_class, _QuietHandler)
        except OSError as exc:
            raise MailmandError(f"email.server.metrics.listen: cannot listen on {self.listen}: "
                                f"{exc.strerror or exc}") from None
        # No `_created` series: they double the output and no dashboard reads them.
        # (Process-wide in prometheus-client; this process is the daemon.)
        disable_created_metrics()
        self._previous = observe.install(self.metrics)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="mailmand-metrics", daemon=True)
        self._thread.start()
        host, port = self.address
        log.info("metrics on http://%s:%d/metrics, health on /healthz", host, port)
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        observe.install(self._previous)
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
