"""Prometheus metrics and /healthz: scraped over HTTP and parsed with prometheus-client's
own text parser; counters checked against what the test delivered through a real daemon."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailmand import Client, Email, __version__
from mailmand.config import load, replace
from mailmand.errors import StoreUnavailable
from mailmand.message import Record
from mailmand.metrics import MetricsServer
from mailmand.queues import open_queue
from mailmand.smtp.fleet import Fleet
from mailmand.stores import open_store
from tests.conftest import ROOT
from tests.daemonproc import DaemonProcess, wait_until

DASHBOARD = ROOT / "packaging" / "grafana-dashboard.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (sample name, sorted labels)."""
    status, text = get(base + "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def metrics_yaml(port: int) -> str:
    return f"    metrics:\n      listen: 127.0.0.1:{port}\n"


def test_counters_match_what_the_daemon_delivered(smtp_server, write_config):
    relay = smtp_server(rcpt_replies={"gone@example.com": "550 5.1.1 no such user"})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # one session, so that the gauge and the relay's count of live connections must agree
    conf = write_config(relay.port, extra_server=metrics_yaml(port), smtp_extra="      connections: 1\n")
    daemon = DaemonProcess(conf).ready()
    try:
        daemon.wait_for(f"metrics on {base}/metrics")
        client = Client(load(conf))
        for to in ("ann@example.com", "bob@example.com", "gone@example.com"):
            client.enqueue(Email(sender="app@example.com", to=to, subject="m", text="hello"))
        client.send_later(Email(sender="app@example.com", to="later@example.com", text="x"), "1h")
        client.close()
        assert wait_until(lambda: value(scrape(base), "mailmand_messages_total", status="failed") == 1, 20)
        assert wait_until(lambda: value(scrape(base), "mailmand_messages_total", status="sent") == 2, 20)
        samples = scrape(base)
        assert len(relay.messages) == 2
        for status, n in (("sent", 2), ("failed", 1), ("deferred", 0), ("expired", 0), ("cancelled", 0)):
            assert value(samples, "mailmand_messages_total", status=status) == n, status
        assert value(samples, "mailmand_smtp_replies_total", **{"class": "2xx"}) == 2
        assert value(samples, "mailmand_smtp_replies_total", **{"class": "5xx"}) == 1
        assert value(samples, "mailmand_smtp_replies_total", **{"class": "4xx"}) == 0
        assert value(samples, "mailmand_smtp_replies_total", **{"class": "none"}) == 0
        assert value(samples, "mailmand_delivery_seconds_count") == 2, "one observation per message sent"
        assert 0 < value(samples, "mailmand_delivery_seconds_sum") < 20  # type: ignore[operator]
        assert value(samples, "mailmand_relay_up", relay=f"127.0.0.1:{relay.port}") == 1
        assert value(samples, "mailmand_relay_connection_limit", relay=f"127.0.0.1:{relay.port}") == 1
        assert value(samples, "mailmand_relay_rate_limit", relay=f"127.0.0.1:{relay.port}") is None  # no limit
        assert value(samples, "mailmand_build_info", version=__version__) == 1
        # the scheduled one waits in the store; nothing is left in the spool
        assert value(samples, "mailmand_queue_messages", status="queued") == 1
        assert value(samples, "mailmand_queue_messages", status="sending") == 0
        assert value(samples, "mailmand_queue_messages", status="deferred") == 0
        assert value(samples, "mailmand_queue_messages", status="held") == 0
        assert value(samples, "mailmand_queue_backlog") == 0
        assert value(samples, "mailmand_oldest_due_seconds") == 0  # the queued one is not due
        # the pooled session stays open between batches, and the gauge follows the relay's count
        assert wait_until(lambda: value(scrape(base), "mailmand_smtp_connections") == relay.active == 1, 10)
        relay.drop_connections()  # the relay cuts the idle session: the next use finds it dead, reopens
        client = Client(load(conf))
        client.enqueue(Email(sender="app@example.com", to="cid@example.com", text="x"))
        client.close()
        assert wait_until(lambda: value(scrape(base), "mailmand_messages_total", status="sent") == 3, 20)
        assert wait_until(lambda: value(scrape(base), "mailmand_smtp_connections") == relay.active == 1, 10)
        status, body = get(base + "/healthz")
        health = json.loads(body)
        assert status == 200 and (health["status"], health["problems"]) == ("ok", [])
        assert [(r["name"], r["state"]) for r in health["relays"]] == [(f"127.0.0.1:{relay.port}", "up")]
    finally:
        assert daemon.stop() == 0


def test_relay_down_shows_as_deferred_none_and_relay_up_0(write_config):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    dead = free_port()
    conf = write_config(dead, extra_server=metrics_yaml(port))  # nothing listens there
    daemon = DaemonProcess(conf).ready()
    try:
        daemon.wait_for(f"metrics on {base}/metrics")
        client = Client(load(conf))
        client.enqueue(Email(sender="app@example.com", to="ann@example.com", text="x"))
        client.close()
        assert wait_until(lambda: value(scrape(base), "mailmand_messages_total", status="deferred") == 1, 20)
        samples = scrape(base)
        assert value(samples, "mailmand_smtp_replies_total", **{"class": "none"}) == 1
        assert value(samples, "mailmand_relay_up", relay=f"127.0.0.1:{dead}") == 0
        assert value(samples, "mailmand_smtp_connections") == 0
        assert value(samples, "mailmand_queue_messages", status="deferred") == 1
        status, body = get(base + "/healthz")  # mail is still accepted: a relay down is not a 503
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok", body
        [r] = health["relays"]
        assert r["state"] == "down" and "Connection refused" in r["last_reply"] and r["since"] <= time.time()
    finally:
        assert daemon.stop() == 0


@pytest.fixture
def state(make_config):
    """A store and a queue with no daemon, and a metrics server on them."""
    cfg = make_config(interval=0.2)
    store = open_store(cfg.server.database, create=True)
    queue = open_queue(cfg.queue, daemon=True)
    fleet = Fleet(replace(cfg.server, smtp=replace(cfg.server.smtp, rate=5.0)))
    srv = MetricsServer("127.0.0.1:0", store, queue, lambda: cfg.server.interval, relays=fleet.states).start()
    host, port = srv.address
    yield srv, store, queue, f"http://{host}:{port}"
    srv.stop()
    fleet.close()
    queue.close()
    store.close()


def record(send_after: float = 0.0, created_at: float | None = None) -> Record:
    email = Email(sender="app@example.com", to="ann@example.com", text="x")
    r = email.to_record(1 << 20, send_after)
    return r if created_at is None else Record(**{**r.__dict__, "created_at": created_at})


def test_backlog_and_oldest_due_are_read_at_scrape_time(state):
    srv, store, queue, base = state
    for _ in range(3):
        queue.put(record().to_json())
    now = time.time()
    store.insert([record(created_at=now - 90), record(send_after=now + 3600)])
    samples = scrape(base)
    assert value(samples, "mailmand_queue_backlog") == 3
    assert value(samples, "mailmand_queue_messages", status="queued") == 2
    oldest = value(samples, "mailmand_oldest_due_seconds")
    assert oldest is not None and 90 <= oldest < 90 + 60


def test_healthz_503_when_the_dispatcher_stalls_or_the_store_is_gone(state):
    srv, store, queue, base = state
    srv.metrics.dispatching()
    status, body = get(base + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    # interval 0.2 s: nothing has dispatched for more than 3 x interval
    assert wait_until(lambda: get(base + "/healthz")[0] == 503, timeout=10)
    status, text = get(base + "/healthz")
    assert "dispatcher has not run for" in text and "3 x interval" in text
    srv.metrics.dispatching()
    assert get(base + "/healthz")[0] == 200
    store.close()  # the store stops answering...
    assert get(base + "/healthz")[0] == 200  # ...which /healthz knows once a call finds it (it asks nothing)
    with pytest.raises(StoreUnavailable):
        store.next_due()  # the dispatcher's next call, say
    status, text = get(base + "/healthz")
    report = json.loads(text)
    assert status == 503 and report["status"] == "failing", text
    assert report["problems"][0].startswith(f"store: the store at {store.path} cannot be read"), text
    assert get(base + "/metrics")[0] == 200, "a scrape goes on without the store's series"
    assert value(scrape(base), "mailmand_queue_messages", status="queued") is None


def test_a_metrics_address_in_use_stops_the_start(make_config):
    from mailmand.errors import MailmandError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = make_config()
        store = open_store(cfg.server.database, create=True)
        queue = open_queue(cfg.queue)
        try:
            with pytest.raises(MailmandError, match=f"cannot listen on 127.0.0.1:{port}"):
                MetricsServer(f"127.0.0.1:{port}", store, queue, lambda: 5.0).start()
        finally:
            queue.close()
            store.close()


def _exprs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_grafana_dashboard_uses_only_exported_metrics(state):
    srv, store, queue, base = state
    dashboard = json.loads(Path(DASHBOARD).read_text())
    exprs = _exprs(dashboard)
    assert len(exprs) >= 8, "a panel per metric family, or near it"
    exported = {name for name, _ in scrape(base)}
    used = {m for e in exprs for m in re.findall(r"\bmailmand_[a-z_]+", e)}
    assert used - exported == set(), f"the dashboard names metrics the daemon does not export: {used - exported}"
    families = {re.sub(r"_(total|bucket|count|sum)$", "", m) for m in exported}
    assert {re.sub(r"_(total|bucket|count|sum)$", "", m) for m in used} == families, "every family on the dashboard"


def test_each_outcome_is_counted_with_its_own_reply_in_one_dispatch_run(smtp_server, make_config):
    """In process: the dispatcher reports through the observer hook, one call per message,
    each with the attempt that decided it (several results may commit together)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from mailmand import observe
    from mailmand.config import SmtpConfig
    from mailmand.daemon import Daemon
    from mailmand.metrics import Metrics

    relay = smtp_server(rcpt_replies={"gone@example.com": "550 5.1.1 no such user",
                                      "later@example.com": "451 4.2.0 try later"})
    cfg = make_config(smtp=SmtpConfig(host=relay.host, port=relay.port, timeout=5.0, connections=1))
    client = Client(cfg)
    for to in ("a@example.com", "gone@example.com", "b@example.com", "later@example.com", "c@example.com"):
        client.enqueue(Email(sender="app@example.com", to=to, text="x"))
    client.close()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    previous = observe.install(metrics)
    daemon = Daemon(cfg)
    try:
        daemon.once()
    finally:
        daemon.close()
        observe.install(previous)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    assert value(samples, "mailmand_messages_total", status="sent") == 3
    assert value(samples, "mailmand_messages_total", status="failed") == 1
    assert value(samples, "mailmand_messages_total", status="deferred") == 1
    assert value(samples, "mailmand_smtp_replies_total", **{"class": "2xx"}) == 3
    assert value(samples, "mailmand_smtp_replies_total", **{"class": "5xx"}) == 1
    assert value(samples, "mailmand_smtp_replies_total", **{"class": "4xx"}) == 1
    assert value(samples, "mailmand_delivery_seconds_count") == 3
    assert value(samples, "mailmand_smtp_connections") == 0, "Daemon.close() closed the session it opened"
