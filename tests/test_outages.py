"""Outages that speak: a PostgreSQL gone dark behind a proxy (TCP open, no
answer) is found within `timeout`, logged once and recovered from; /healthz
answers at once from what the daemon knows and names the failing part; the
metrics endpoint holds no thread for an idle client; a Redis that comes back
empty is reported. Real servers: PostgreSQL through a TCP proxy, a private
redis-server, a real daemon and relay."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mailmand import Client, Email
from mailmand.config import QueueConfig, load
from mailmand.metrics import MetricsServer
from mailmand.queues import open_queue
from mailmand.queues.redis import RedisQueue
from mailmand.stores import open_store
from tests.conftest import postgres_block, write_store_config
from tests.daemonproc import DaemonProcess, wait_until
from tests.tcpproxy import TcpProxy, _free_port


def get(url: str, timeout: float) -> tuple[int, str, float]:
    """(status, body, seconds taken); a timeout raises (the endpoint must answer)."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), time.monotonic() - started


def test_a_postgres_gone_dark_is_found_within_timeout_reported_and_recovered(postgres_dsn, smtp_server, tmp_path):
    target = conninfo_to_dict(postgres_dsn)
    proxy = TcpProxy((str(target.get("host", "127.0.0.1")), int(target.get("port", 5432)))).up()
    dsn = make_conninfo(**{**target, "host": "127.0.0.1", "port": str(proxy.port)})
    relay = smtp_server()
    metrics = _free_port()
    conf = write_store_config(tmp_path / "m.yaml", tmp_path / "spool", relay.port,
                              postgres_block(dsn) + "      timeout: 3s\n",
                              server=f"    metrics:\n      listen: 127.0.0.1:{metrics}\n")
    health = f"http://127.0.0.1:{metrics}/healthz"
    client = Client(load(conf, producer=True))
    daemon = DaemonProcess(conf).ready()
    try:
        client.enqueue(Email(sender="a@example.com", to="b@example.com", subject="before", text="x"))
        assert wait_until(lambda: len(relay.messages) == 1, timeout=30)
        assert wait_until(lambda: get(health, 1)[0] == 200, timeout=10)

        proxy.blackhole()
        dark = time.monotonic()
        client.enqueue(Email(sender="a@example.com", to="b@example.com", subject="in the dark", text="x"))
        slowest = 0.0
        # Scrapes that wait on the dark store meanwhile (each up to the timeout): more than
        # the endpoint has workers. /healthz must not queue behind them.
        scrapes = [threading.Thread(target=get, args=(f"http://127.0.0.1:{metrics}/metrics", 30), daemon=True)
                   for _ in range(8)]
        for t in scrapes:
            t.start()

        def health_names_the_store() -> bool:
            nonlocal slowest
            status, body, took = get(health, 2)  # answers at once, whatever the store does
            slowest = max(slowest, took)
            return status == 503 and "store: postgres" in body

        assert wait_until(health_names_the_store, timeout=30, interval=0.2)
        named = time.monotonic() - dark
        daemon.wait_for("no answer within 3s (email.server.database.timeout)", timeout=30)
        found = time.monotonic() - dark
        status, text, took = get(f"http://127.0.0.1:{metrics}/metrics", 2)
        assert status == 200 and "mailmand_build_info" in text and "mailmand_queue_messages" not in text
        time.sleep(3)  # more failed tries: not more lines
        lines = [x for x in daemon.lines if "no answer within" in x]
        assert 1 <= len(lines) <= 4, lines  # once per part that met it (dispatch, ingest, heartbeat...)
        time.sleep(4)
        assert [x for x in daemon.lines if "no answer within" in x] == lines, "repeated, not summarised"
        print(f"\nstore dark: /healthz named it after {named:.1f}s (slowest answer {slowest * 1000:.0f} ms), "
              f"the daemon logged it after {found:.1f}s (timeout 3s), /metrics in {took * 1000:.0f} ms")

        proxy.restore()
        assert wait_until(lambda: len(relay.messages) == 2, timeout=60), daemon.log
        assert wait_until(lambda: get(health, 2)[0] == 200, timeout=30)
        assert "cleared after" in daemon.log
        assert daemon.proc.poll() is None
    finally:
        client.close()
        proxy.down()
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log
    print("\n".join(x for x in daemon.lines if "WARNING" in x or "cleared" in x or "ERROR" in x))


def test_the_metrics_endpoint_holds_no_thread_for_idle_clients(make_config):
    cfg = make_config(interval=60.0)
    store = open_store(cfg.server.database, create=True)
    queue = open_queue(cfg.queue, daemon=True)
    srv = MetricsServer("127.0.0.1:0", store, queue, lambda: cfg.server.interval).start()
    host, port = srv.address
    idle: list[socket.socket] = []
    try:
        threads = threading.active_count()
        for _ in range(300):
            idle.append(socket.create_connection((host, port), timeout=10))
        slow = socket.create_connection((host, port), timeout=10)  # a request head that never ends
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        idle.append(slow)
        status, body, took = get(f"http://{host}:{port}/healthz", 5)
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert get(f"http://{host}:{port}/metrics", 5)[0] == 200
        held = threading.active_count() - threads
        assert held <= 5, f"{held} threads for 300 idle clients"
        # ...and none of them is kept: closed once they have not sent a request in time.
        assert wait_until(lambda: all(s.recv(1) == b"" for s in idle[-5:]), timeout=30)
        print(f"\n301 idle metrics clients: {held} more thread(s); /healthz answered in {took * 1000:.0f} ms")
    finally:
        for s in idle:
            s.close()
        srv.stop()
        queue.close()
        store.close()


def test_a_redis_that_comes_back_empty_is_reported(redis_server, caplog):
    server = redis_server()  # no persistence: what a restart loses, it loses
    cfg = QueueConfig(engine="redis", url=server.url, name="mailmand")
    daemon = RedisQueue(cfg, daemon=True, consumer="d1")
    producer = RedisQueue(cfg)
    try:
        daemon.check()
        daemon.resume()
        producer.put({"id": "a"})
        assert len(daemon.take(10)) == 1
        with caplog.at_level(logging.WARNING, logger="mailmand.queues.redis"):
            assert daemon.take(10) == []
            assert "lost its state" not in caplog.text  # a quiet stream is not a lost one
            server.stop()
            server.start()  # empty
            producer.put({"id": "b"})  # the stream again, without the group
            assert wait_until(lambda: len(daemon.take(10)) == 1 or "lost its state" in caplog.text, timeout=30)
        assert "lost its state: its consumer group was gone" in caplog.text
        assert "appendonly yes" in caplog.text
    finally:
        producer.close()
        daemon.close()


def test_each_pooled_connection_bounds_its_waits(postgres_dsn):
    from mailmand.config import DatabaseConfig
    from mailmand.stores.postgres import connect_kwargs

    store = open_store(DatabaseConfig(engine="postgres", dsn=postgres_dsn, timeout=3.0), create=True)
    try:
        assert store._read("SHOW statement_timeout") == [("3s",)]  # the server stops what nobody waits for
    finally:
        store.close()
    # 30 s (the default): connecting, and a dead peer found by keepalives within about as long.
    assert connect_kwargs(30.0) == {"connect_timeout": 30, "keepalives": 1, "keepalives_idle": 10,
                                    "keepalives_interval": 5, "keepalives_count": 4, "tcp_user_timeout": 30000}
    assert DatabaseConfig().timeout == 30.0
