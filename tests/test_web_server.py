"""The web listener's life and limits, against a real daemon: it starts and stops with
the daemon, refuses a port in use at start, takes a new token on reload, and a client
that connects and says nothing (or too little) cannot hold a connection for long."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import httpx

from mailmand.config import load
from mailmand.stores import open_store
from mailmand.web.server import WebServer
from tests.conftest import mailmand_cmd
from tests.daemonproc import wait_until
from tests.webutil import TOKEN, free_port, web_yaml


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_and_slow_clients_are_closed_and_cannot_lock_others_out(web_daemon):
    daemon = web_daemon(extra_server="      timeout: 1s\n      max-connections: 3\n")
    port = int(daemon.base.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a head never finished
    try:
        # Three held: a fourth client is turned away, with an answer rather than a hang.
        with daemon.anonymous() as anon:
            assert wait_until(lambda: anon.get("/healthz").status_code == 503, timeout=5)
        for sock in (*idle, slow):
            sock.settimeout(10)
            assert _closed_by_server(sock)
        with daemon.anonymous() as anon:
            assert anon.get("/healthz").status_code == 200
    finally:
        for sock in (*idle, slow):
            sock.close()


def test_healthz_answers_as_the_metrics_listener_does(web_daemon):
    daemon = web_daemon(interval="1s")
    time.sleep(4)  # past 3 x interval: only a dispatcher that keeps running keeps it ok
    with daemon.anonymous() as anon:
        r = anon.get("/healthz")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert (body["status"], body["problems"]) == ("ok", [])
    assert [relay["state"] for relay in body["relays"]] == ["up"]


def test_a_port_in_use_stops_the_daemon_at_start(write_config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = write_config(free_port(), extra_server=web_yaml(port, token=None))
        done = subprocess.run(mailmand_cmd("run", "-c", str(conf)), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"email.server.web.listen: cannot listen on 127.0.0.1:{port}" in done.stderr


def test_a_new_token_applies_on_reload(web_daemon, tmp_path):
    daemon = web_daemon()
    secret = next(tmp_path.glob("web-token-*"))
    new = "a-new-token-fedcba9876543210"
    secret.write_text(new + "\n")
    daemon.proc.signal(signal.SIGHUP)
    daemon.proc.wait_for("configuration reloaded")
    with httpx.Client(base_url=daemon.base, headers={"Authorization": f"Bearer {new}"}) as http:
        assert http.get("/api/v1/stats").status_code == 200
    with daemon.http() as old:
        assert old.get("/api/v1/stats").status_code == 401
    assert new not in daemon.proc.log and TOKEN not in daemon.proc.log


def test_a_daemon_without_web_never_imports_it(tmp_path, write_config):
    """Starlette, uvicorn and Jinja2 cost a daemon that serves no web pages nothing."""
    from tests.test_imports import run_fresh

    conf = write_config(free_port())
    code = ("import threading; from mailmand.config import load; from mailmand.daemon import Daemon\n"
            f"d = Daemon(load({str(conf)!r})); threading.Timer(1.0, d.stop).start(); d.run()")
    modules = run_fresh(tmp_path, code, conf)
    assert "mailmand.dispatcher" in modules  # it ran
    assert not {m.split(".")[0] for m in modules} & {"starlette", "uvicorn", "jinja2"}
    assert "mailmand.web" not in modules
    with_web = write_config(free_port(), name="web.yaml", extra_server=web_yaml(free_port(), token=None))
    modules = run_fresh(tmp_path, code.replace(str(conf), str(with_web)), with_web)
    assert {"starlette", "uvicorn", "jinja2", "mailmand.web.server"} <= modules


def test_the_listener_names_tcp_so_its_connections_get_nodelay(tmp_path, write_config):
    """asyncio sets TCP_NODELAY only on sockets created with IPPROTO_TCP: without it, a
    keep-alive client waits out its delayed ACK (40 ms) on every response."""
    port = free_port()
    conf = write_config(free_port(), extra_server=web_yaml(port, token=None))
    cfg = load(conf)
    store = open_store(cfg.server.database, create=True)
    from mailmand.metrics import Health

    server = WebServer(cfg, Health(lambda: 0.0, store, lambda: 1e9), store=store)
    try:
        server.start()
        assert server._sock is not None and server._sock.proto == socket.IPPROTO_TCP
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert http.get("/healthz").status_code == 200
    finally:
        server.stop()
        store.close()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:  # stopped: nothing listens
        try:
            http.get("/healthz", timeout=2)
            raise AssertionError("still answering after stop")
        except httpx.ConnectError:
            pass
