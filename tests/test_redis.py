"""The Redis queue engine: producers XADD, daemons read as one consumer group.

Against the machine's Redis (MAILMAND_TEST_REDIS_URL, a key of each test's
own) and, for faults, private redis-server processes that a test stops.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailmand import Client, Email
from mailmand.config import Config, DatabaseConfig, QueueConfig, ServerConfig, SmtpConfig, load
from mailmand.errors import ConfigError, QueueError, QueueUnavailable
from mailmand.ingest import Ingester
from mailmand.message import Record
from mailmand.queues import open_queue
from mailmand.queues.redis import GROUP, MAX_DELIVERIES, masked
from mailmand.stores import open_store
from tests.conftest import ROOT, run_cli
from tests.daemonproc import DaemonProcess, wait_until
from tests.redisutil import free_port, redis_url, require_redis


def redis_config(tmp_path: Path, url: str, key: str, relay_port: int = 9, **server: object) -> Config:
    return Config(
        queue=QueueConfig(engine="redis", url=url, name=key),
        server=ServerConfig(database=DatabaseConfig(path=tmp_path / "mailmand.db"),
                            smtp=SmtpConfig(host="127.0.0.1", port=relay_port, tls="none", timeout=5.0),
                            **server),
    )


def write_redis_yaml(tmp_path: Path, url: str, key: str, relay_port: int = 9, name: str = "mailmand.yaml",
                     db_path: Path | None = None, extra_server: str = "") -> Path:
    path = tmp_path / name
    path.write_text(
        "email:\n"
        f"  queue:\n    default:\n      engine: redis\n      url: {url}\n      name: {key}\n"
        "  server:\n"
        f"    database:\n      path: {db_path or tmp_path / 'mailmand.db'}\n"
        "    interval: 1s\n    backoff: {min: 1s, max: 2s}\n"
        f"{extra_server}"
        f"    smtp:\n      host: 127.0.0.1\n      port: {relay_port}\n      tls: none\n      timeout: 5s\n"
    )
    path.chmod(0o600)
    return path


def email(i: int = 0, **kw: object) -> Email:
    return Email(sender="app@example.com", to="user@example.com", subject=f"hello {i}", text="hi", **kw)


def test_the_entry_is_the_spools_json_record(tmp_path: Path, redis_key: str):
    client = Client(redis_config(tmp_path, redis_url(), redis_key))
    msg_id = client.enqueue(email(1))
    entries = require_redis().xrange(redis_key)  # type: ignore[attr-defined]
    assert len(entries) == 1
    data = json.loads(entries[0][1][b"record"])
    record = Record.from_json(data)
    assert record.id == msg_id and record.subject == "hello 1"
    assert data == record.to_json()  # the same JSON the spool holds; never a pickle


def test_redis_and_sqlite_one_daemon_delivers_and_status_shows_the_stream(smtp_server, tmp_path: Path,
                                                                          redis_key: str):
    relay = smtp_server()
    conf = write_redis_yaml(tmp_path, redis_url(), redis_key, relay.port)
    daemon = DaemonProcess(conf).ready()
    try:
        client = Client(conf)
        ids = [client.enqueue(email(i)) for i in range(20)]
        assert wait_until(lambda: len(relay.messages) == 20, timeout=30), daemon.log
        out = run_cli("status", "--json", "-c", str(conf))
        assert out.returncode == 0, out.stderr
        queue = json.loads(out.stdout)["queue"]
        assert queue["engine"] == "redis" and redis_key in queue["where"]
        assert (queue["length"], queue["pending"]) == (0, 0)  # acked and deleted after the commit
        assert len(queue["consumers"]) == 1  # this daemon, one consumer of the group
        text = run_cli("status", "-c", str(conf)).stdout.decode()
        assert "length 0 (not yet ingested), pending 0, consumers 1" in text
        shown = run_cli("show", ids[0], "-c", str(conf))
        assert b"status:    sent" in shown.stdout
    finally:
        assert daemon.stop() == 0
    assert sorted(m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in relay.messages) == sorted(
        f"hello {i}".encode() for i in range(20))


def test_show_says_when_a_message_is_still_in_redis(tmp_path: Path, redis_key: str):
    conf = write_redis_yaml(tmp_path, redis_url(), redis_key)
    msg_id = Client(conf).enqueue(email())
    out = run_cli("show", msg_id, "-c", str(conf))
    assert out.returncode == 0, out.stderr
    assert b"in the queue (waiting to be ingested)" in out.stdout and redis_key.encode() in out.stdout
    assert run_cli("show", "nosuchid", "-c", str(conf)).returncode == 1
    open_store(load(conf).server.database, create=True).close()  # as the daemon would have made it
    status = json.loads(run_cli("status", "--json", "-c", str(conf)).stdout)
    assert status["queue"]["length"] == 1 and status["spool"] == 1


def test_unreachable_redis_is_a_queue_error_naming_the_url_without_the_password(tmp_path: Path):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    client = Client(redis_config(tmp_path, url, "k"))
    with pytest.raises(QueueUnavailable) as err:
        client.enqueue(email())
    assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/0" in str(err.value)
    assert "hunter2" not in str(err.value)
    conf = write_redis_yaml(tmp_path, url, "k")
    send = run_cli("send", "--from", "a@example.com", "--to", "b@example.com", "--text", "x", "-c", str(conf))
    assert send.returncode == 1 and b"cannot reach the Redis queue" in send.stderr
    sendmail = run_cli("-c", str(conf), "sendmail", "b@example.com", input=b"Subject: x\r\n\r\nhi\r\n")
    assert sendmail.returncode == 75, sendmail.stderr  # EX_TEMPFAIL: try again later
    for out in (send, sendmail):
        assert b"hunter2" not in out.stderr and b"Traceback" not in out.stderr


def test_wrong_password_db_or_key_type_name_the_key(tmp_path: Path, redis_server, redis_key: str):
    server = redis_server("--requirepass", "right")
    for url, key in ((f"redis://:wrong@127.0.0.1:{server.port}/0", "email.queue.default.password"),
                     (f"redis://127.0.0.1:{server.port}/0", "email.queue.default.password"),  # none given
                     (f"redis://:right@127.0.0.1:{server.port}/99", "email.queue.default.db")):
        with pytest.raises(ConfigError) as err:
            Client(redis_config(tmp_path, url, "k")).enqueue(email())
        assert err.value.key_path == key, err.value
        assert "right" not in str(err.value).replace("refused", "")
    require_redis().set(redis_key, "a string")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=f"the Redis key '{redis_key}' .* holds a string, not a stream"):
        Client(redis_config(tmp_path, redis_url(), redis_key)).enqueue(email())
    conf = write_redis_yaml(tmp_path, f"redis://:wrong@127.0.0.1:{server.port}/0", "k")
    run = subprocess.run([sys.executable, "-m", "mailmand", "run", "-c", str(conf)], capture_output=True,
                         timeout=60)
    assert run.returncode == 78 and b"email.queue.default.password" in run.stderr, run.stderr


def test_the_daemon_warns_once_when_redis_keeps_nothing_on_disk(redis_server, caplog):
    volatile = redis_server()  # --save "" --appendonly no
    durable = redis_server("--appendonly", "yes", "--appendfsync", "always")
    caplog.set_level(logging.WARNING, "mailmand")
    for server in (volatile, durable):
        q = open_queue(QueueConfig(engine="redis", url=server.url, name="k"), daemon=True)
        q.check()
        q.close()
    warnings = [r.getMessage() for r in caplog.records if "keeps nothing on disk" in r.getMessage()]
    assert warnings == [f"Redis at {volatile.url} keeps nothing on disk (appendonly no, save \"\"): a Redis "
                        "restart loses every message not yet ingested (durability: docs/redis.md)"]


def test_an_entry_delivered_more_than_5_times_is_quarantined_and_acked(tmp_path: Path, redis_key: str):
    cfg = redis_config(tmp_path, redis_url(), redis_key)
    client = Client(cfg)
    poison = client.enqueue(email(1))
    r = require_redis()
    r.xgroup_create(redis_key, GROUP, id="0")  # type: ignore[attr-defined]
    # A daemon that died on it MAX_DELIVERIES times (each restart re-reads what is pending on it).
    r.xreadgroup(GROUP, "crashing", {redis_key: ">"})  # type: ignore[attr-defined]
    for _ in range(MAX_DELIVERIES - 1):
        r.xreadgroup(GROUP, "crashing", {redis_key: "0"})  # type: ignore[attr-defined]
    good = client.enqueue(email(2))
    queue = open_queue(cfg.queue, daemon=True, consumer="next", exclusive=True)
    store = open_store(cfg.server.database, create=True)
    queue.resume()
    result = Ingester(queue, store).drain()
    assert (result.ingested, result.quarantined) == (1, 1)
    assert [m.id for m in store.list_messages()] == [good]
    kept = store.quarantined()
    assert len(kept) == 1 and f"delivered {MAX_DELIVERIES + 1} times" in kept[0].reason
    assert json.loads(kept[0].data)["id"] == poison  # the entry's bytes are kept
    assert re.fullmatch(rf"redis {re.escape(redis_url())} key {redis_key} entry \d+-\d+", kept[0].source)
    assert r.xlen(redis_key) == 0  # type: ignore[attr-defined]  # acked and deleted: delivery goes on
    queue.close()


def test_a_dead_daemons_pending_entries_are_taken_over_after_the_lease(tmp_path: Path, redis_key: str):
    cfg = redis_config(tmp_path, redis_url(), redis_key)
    client = Client(cfg)
    ids = {client.enqueue(email(i)) for i in range(10)}
    dead = open_queue(cfg.queue, daemon=True, consumer="dead", lease=0.5)
    dead.resume()
    assert len(dead.take(100)) == 10  # read, then killed before its commit
    store = open_store(cfg.server.database, create=True)
    live = open_queue(cfg.queue, daemon=True, consumer="live", lease=0.5, exclusive=False)
    live.resume()  # not exclusive: another daemon's entries are left to the lease
    ingester = Ingester(live, store)
    assert ingester.drain().ingested == 0
    assert wait_until(lambda: (live.wait(0.2), ingester.drain())[1].ingested == 10 or
                      len(store.list_messages(limit=100)) == 10, timeout=20)
    assert {m.id for m in store.list_messages(limit=100)} == ids
    assert live.info().length == 0 and live.info().pending == 0
    dead.close()
    live.close()


def test_one_idempotency_key_from_two_app_servers_is_one_message(tmp_path: Path, redis_key: str):
    cfg = redis_config(tmp_path, redis_url(), redis_key)
    code = ("import sys; from mailmand import Client, Email; from mailmand.config import load;"
            "print(Client(load(sys.argv[1], producer=True)).enqueue(Email(sender='a@example.com',"
            " to='b@example.com', text=sys.argv[2], idempotency_key='order-42')))")
    conf = write_redis_yaml(tmp_path, redis_url(), redis_key)
    ids = {subprocess.run([sys.executable, "-c", code, str(conf), f"server {n}"], capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip() for n in (1, 2)}
    assert len(ids) == 1  # the same key gives the same id everywhere
    # Two daemons ingest concurrently from one group: still one message.
    store = open_store(cfg.server.database, create=True)
    a = open_queue(cfg.queue, daemon=True, consumer="a", exclusive=False)
    b = open_queue(cfg.queue, daemon=True, consumer="b", exclusive=False)
    results = [Ingester(q, store).drain() for q in (a, b)]
    assert sum(r.ingested for r in results) == 1 and sum(r.duplicates for r in results) == 1
    assert [m.id for m in store.list_messages()] == list(ids)
    a.close()
    b.close()


def test_a_missing_redis_py_says_what_to_install(tmp_path: Path):
    code = ("import sys; sys.modules['redis'] = None\n"  # as if the extra were not installed
            "from mailmand.config import QueueConfig\nfrom mailmand.queues import open_queue\n"
            "from mailmand.errors import ConfigError\n"
            "try:\n    open_queue(QueueConfig(engine='redis'))\nexcept ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'mailmand[redis]'" in out.stdout, out.stderr


def test_masked_hides_only_the_password():
    assert masked("redis://:s3cret@h:6379/2") == "redis://:***@h:6379/2"
    assert masked("rediss://user:s3cret@[::1]:6380/0") == "rediss://user:***@[::1]:6380/0"
    assert masked("redis://h:6379/0") == "redis://h:6379/0"


def test_the_daemon_rides_out_a_redis_outage(smtp_server, tmp_path: Path, redis_server):
    server = redis_server()
    relay = smtp_server()
    conf = write_redis_yaml(tmp_path, server.url, "mailmand", relay.port)
    daemon = DaemonProcess(conf).ready()
    try:
        client = Client(conf)
        for i in range(3):
            client.enqueue(email(i))
        later = [client.send_later(email(10 + i), "4s") for i in range(3)]  # stored now, sent during the outage
        assert wait_until(lambda: len(relay.messages) == 3, timeout=30), daemon.log
        server.stop()
        with pytest.raises(QueueError):
            client.enqueue(email(99))  # producers are told at once; nothing half-written
        # Delivery of what is in the store goes on while Redis is down.
        assert wait_until(lambda: len(relay.messages) == 6, timeout=30), daemon.log
        assert daemon.proc.poll() is None
        server.start()  # back, and empty (it kept nothing on disk): the group is made again
        new = [client.enqueue(email(20 + i)) for i in range(3)]
        assert wait_until(lambda: len(relay.messages) == 9, timeout=60), daemon.log
    finally:
        assert daemon.stop() == 0
    failing = [line for line in daemon.lines if "ingest failed" in line]
    assert len(failing) == 1, daemon.log  # once per outage (then a summary a minute at most)
    assert "cannot reach the Redis queue" in failing[0] and "Traceback" not in daemon.log
    assert any("ingest failing: cleared" in line for line in daemon.lines), daemon.log
    assert len(later) == len(new) == 3


def test_the_go_originals_example_runs_with_only_its_host_changed(tmp_path: Path, redis_server, smtp_server):
    server = redis_server()  # a Redis of this test's own (the port changes with it)
    text = (ROOT / "config" / "go-original.yaml").read_text()
    conf = tmp_path / "go.yaml"
    conf.write_text(text.replace("host:   dockerhost", "host:   127.0.0.1").replace(
        "port:   6379", f"port:   {server.port}"))
    conf.chmod(0o600)  # it holds a literal password
    out = run_cli("-c", str(conf), "send", "--from", "a@example.com", "--to", "b@example.com", "--subject", "go",
                  "--text", "hi")
    assert out.returncode == 0, out.stderr
    import redis

    assert redis.Redis.from_url(server.url).xlen("myqueue") == 1  # the Go original's queue name
    # A daemon on it (its store and relay moved here: smtp.gmail.com is not reachable from tests).
    relay = smtp_server()
    daemon_conf = tmp_path / "daemon.yaml"
    daemon_conf.write_text(conf.read_text().replace("/Users/mak/Downloads/sql.db", str(tmp_path / "sql.db"))
                           .replace("host: smtp.gmail.com\n            port: 567",
                                    f"host: 127.0.0.1\n            port: {relay.port}\n            tls: none")
                           .replace("                username: abc@def.com\n                password: ghi\n", ""))
    daemon_conf.chmod(0o600)
    daemon = DaemonProcess(daemon_conf).ready()
    try:
        assert wait_until(lambda: len(relay.messages) == 1, timeout=30), daemon.log
    finally:
        assert daemon.stop() == 0


def test_a_daemon_that_stops_hands_back_what_it_read_at_once(tmp_path: Path, redis_key: str):
    cfg = redis_config(tmp_path, redis_url(), redis_key)
    client = Client(cfg)
    ids = {client.enqueue(email(i)) for i in range(5)}
    stopping = open_queue(cfg.queue, daemon=True, consumer="stopping", lease=300, exclusive=False)
    stopping.resume()
    assert stopping.wait(1.0)  # read into its buffer, then a graceful stop before storing them
    stopping.close()
    other = open_queue(cfg.queue, daemon=True, consumer="other", lease=300, exclusive=False)
    other.resume()
    store = open_store(cfg.server.database, create=True)
    # Not after the 5-minute lease: at the other daemon's next claim pass.
    assert Ingester(other, store).drain().ingested == 5
    assert {m.id for m in store.list_messages()} == ids
    other.close()


def test_the_password_from_password_file_with_host_or_url(tmp_path: Path, redis_server):
    server = redis_server("--requirepass", "s3cret")
    secret = tmp_path / "redis.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    for where in (f"host: 127.0.0.1\n      port: {server.port}\n", f"url: redis://127.0.0.1:{server.port}/0\n"):
        conf = tmp_path / "c.yaml"
        conf.write_text(f"email:\n  queue:\n    default:\n      engine: redis\n      {where}"
                        f"      name: k\n      password-file: {secret}\n"
                        "  server:\n    smtp:\n      host: 127.0.0.1\n")
        out = run_cli("-c", str(conf), "send", "--from", "a@example.com", "--to", "b@example.com", "--text", "x")
        assert out.returncode == 0, out.stderr
        status = run_cli("-c", str(conf), "status")
        assert b"s3cret" not in status.stdout + status.stderr
    import redis

    assert redis.Redis.from_url(server.url, password="s3cret").xlen("k") == 2
