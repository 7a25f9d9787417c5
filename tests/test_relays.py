"""Relays that push back, against real scripted relays on loopback (tests/smtpd.py),
several at once: the retry schedule a greylisting relay gets, failover from a relay
that is down and back, routing by priority, weight and sender, quotas that hold
across a restart, and the adaptive throttle against a relay that refuses sessions
past N and one that refuses messages past 5 a second. The clock is injected where
the schedule is read; the throttle runs on the real one."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest

from mailmand import Client, Email
from mailmand.cli import main
from mailmand.config import Config, load
from mailmand.daemon import Daemon
from mailmand.smtp import health
from mailmand.stores import Status
from tests.conftest import postgres_block
from tests.daemonproc import DaemonProcess, wait_until


def relay_yaml(server, name: str, **keys: object) -> str:
    lines = [f"      - name: {name}", "        host: 127.0.0.1", f"        port: {server.port}",
             "        tls: none", "        timeout: 5s"]
    for key, value in keys.items():
        lines.append(f"        {key.replace('_', '-')}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, relays: str, server: str = "", database: str | None = None) -> Path:
    path = tmp_path / "mailmand.yaml"
    db = database or f"      engine: sqlite3\n      path: {tmp_path / 'mailmand.db'}\n"
    path.write_text("email:\n"
                    f"  queue:\n    default:\n      engine: spool\n      path: {tmp_path / 'spool'}\n"
                    f"  server:\n    database:\n{db}    interval: 1s\n{server}    relays:\n{relays}")
    return path


def enqueue(cfg: Config, n: int, sender: str = "app@example.com") -> list[str]:
    client = Client(cfg)
    try:
        return [client.enqueue(Email(sender=sender, to="ann@example.net", subject=f"m{i}", text="hello"))
                for i in range(n)]
    finally:
        client.close()


def show(conf: Path, mid: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["show", mid, "--json", "-c", str(conf)]) == 0
    return json.loads(capsys.readouterr().out)


# -- the retry schedule -------------------------------------------------------------


def test_a_greylisted_message_is_retried_when_the_schedule_says(smtp_server, tmp_path, capsys):
    grey = smtp_server(rcpt_replies={"ann@example.net": "451 4.7.1 greylisted, try again in 5 minutes"})
    conf = write(tmp_path, relay_yaml(grey, "grey"))  # the defaults: backoff auto, max-fails 3, max-time 1h
    d = Daemon(load(conf))
    [mid] = enqueue(d.cfg, 1)
    t0 = time.time()
    assert d.once(now=t0).dispatched.deferred == 1
    first = show(conf, mid, capsys)
    assert first["status"] == "deferred" and "451 4.7.1 greylisted" in first["last_error"]
    assert t0 + 0.9 * 900 <= first["due_at"] <= t0 + 1.1 * 900  # about 15 minutes after the first attempt
    assert d.once(now=first["due_at"] - 1).dispatched.batches == 0  # not before

    assert d.once(now=first["due_at"]).dispatched.deferred == 1  # still greylisted at the second attempt
    second = show(conf, mid, capsys)
    assert len(second["attempts"]) == 2 and second["fails"] == 2
    assert first["due_at"] + 0.9 * 1800 <= second["due_at"] <= first["due_at"] + 1.1 * 1800  # about +45 min
    assert second["due_at"] - t0 <= 3600  # within max-time

    grey.rcpt_replies.clear()  # the greylisting window has passed
    assert d.once(now=second["due_at"]).dispatched.sent == 1
    assert show(conf, mid, capsys)["status"] == "sent" and len(grey.messages) == 1
    d.close()


def test_a_flush_gives_a_deferred_message_one_attempt_not_two(smtp_server, tmp_path, capsys):
    relay = smtp_server(data_reply="451 4.3.0 try again later")
    conf = write(tmp_path, relay_yaml(relay, "r"), server="    max-fails: 5\n    backoff: {min: 0, max: 1s}\n")
    d = Daemon(load(conf))
    [mid] = enqueue(d.cfg, 1)
    assert d.once().dispatched.deferred == 1
    assert d.store.flush(None, time.time()) == 1  # what `mailmand flush` does (it then signals the daemon)
    run = d.once().dispatched  # the real clock: a retry due at once would be claimed again by this very run
    assert (run.deferred, run.failed) == (1, 0)
    assert len(show(conf, mid, capsys)["attempts"]) == 2
    d.close()


# -- several relays -----------------------------------------------------------------


def test_mail_fails_over_while_a_relay_is_down_and_goes_back_when_it_is_up(smtp_server, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(health, "COOL_OFF_FIRST", 0.5)  # seconds, not the daemon's 10
    primary, backup = smtp_server(), smtp_server()
    conf = write(tmp_path, relay_yaml(primary, "primary") + relay_yaml(backup, "backup"))
    primary.stop()
    d = Daemon(load(conf))
    ids = enqueue(d.cfg, 6)
    run = d.once().dispatched
    assert (run.sent, run.deferred) == (6, 0)  # in the same run, on the next relay
    assert len(backup.messages) == 6
    info = show(conf, ids[0], capsys)
    assert info["fails"] == 0 and len(info["attempts"]) == 1  # the relay's outage is not the message's fault
    [p, b] = d.dispatcher.relay_states()
    assert (p["name"], p["state"], b["state"]) == ("primary", "down", "up")
    assert "Connection refused" in p["last_reply"]

    enqueue(d.cfg, 3)
    assert d.once().dispatched.sent == 3
    assert len(backup.messages) == 9  # still cooling off: not tried for these

    primary.restart()
    time.sleep(1.1)  # its cool-off (0.5 s, doubled once at most) is over: the next message probes it
    enqueue(d.cfg, 4)
    assert d.once().dispatched.sent == 4
    assert len(primary.messages) == 4 and len(backup.messages) == 9
    assert d.dispatcher.relay_states()[0]["state"] == "up"
    d.close()


def test_no_relay_up_defers_without_counting_and_tries_again_next_tick(smtp_server, tmp_path, capsys):
    a, b = smtp_server(), smtp_server()
    conf = write(tmp_path, relay_yaml(a, "a") + relay_yaml(b, "b"))
    a.stop()
    b.stop()
    d = Daemon(load(conf))
    mid, *_ = enqueue(d.cfg, 5)
    run = d.once().dispatched
    assert run.deferred + run.released == 5 and run.failed == 0
    info = show(conf, mid, capsys)
    assert info["fails"] == 0 and "Connection refused" in (info["last_error"] or "Connection refused")
    assert [r["state"] for r in d.dispatcher.relay_states()] == ["down", "down"]
    d.close()


def test_equal_priorities_share_by_weight_and_senders_route_by_domain(smtp_server, tmp_path):
    heavy, light, org = smtp_server(), smtp_server(), smtp_server()
    conf = write(tmp_path, relay_yaml(heavy, "heavy", priority=1, weight=3) + relay_yaml(light, "light", priority=1)
                 + relay_yaml(org, "org", priority=1, senders=["example.org"]))
    d = Daemon(load(conf))
    enqueue(d.cfg, 40)
    enqueue(d.cfg, 3, sender="news@example.org")
    enqueue(d.cfg, 2, sender="x@mail.example.org")  # a subdomain of a named one
    assert d.once().dispatched.sent == 45
    assert (len(heavy.messages), len(light.messages)) == (30, 10)  # 3:1, exactly
    assert sorted(m.mail_from for m in org.messages) == ["news@example.org"] * 3 + ["x@mail.example.org"] * 2
    d.close()


@pytest.mark.parametrize("engine", ["sqlite3", "postgres"])
def test_a_daily_quota_holds_across_a_restart(engine, smtp_server, tmp_path, request):
    cheap, dear = smtp_server(), smtp_server()
    database = postgres_block(request.getfixturevalue("postgres_dsn")) if engine == "postgres" else None
    conf = write(tmp_path, relay_yaml(cheap, "cheap", quota={"per-day": 5}) + relay_yaml(dear, "dear"),
                 database=database)
    d = Daemon(load(conf))
    enqueue(d.cfg, 3)
    assert d.once().dispatched.sent == 3
    d.close()
    assert len(cheap.messages) == 3

    d = Daemon(load(conf))  # a new daemon on the same store
    enqueue(d.cfg, 4)
    assert d.once().dispatched.sent == 4
    assert (len(cheap.messages), len(dear.messages)) == (5, 2)  # 5 a day through cheap, the rest failed over
    day = int(time.time() // 86400)
    assert d.store.quota_used("cheap", day) == 5
    d.close()


# -- pushing back ---------------------------------------------------------------------


def test_too_many_connections_halves_the_sessions_and_nothing_is_lost(smtp_server, tmp_path, caplog):
    busy = smtp_server(max_sessions=2)
    conf = write(tmp_path, relay_yaml(busy, "busy", connections=8))
    d = Daemon(load(conf))
    ids = enqueue(d.cfg, 60)
    try:
        caplog.set_level(logging.WARNING, "mailmand.smtp.throttle")
        run = d.once().dispatched
        assert busy.refused_sessions >= 1 and run.failed == 0  # it did push back
        halved = [r.getMessage() for r in caplog.records if "pushed back" in r.getMessage()]
        assert halved and "too many connections" in halved[0] and "now 4 connection(s)" in halved[0], halved
        [state] = d.dispatcher.relay_states()
        assert "too many connections" in state["last_pushback"]
        # Delivery goes on: what a refused session held went out on another, or waits uncounted.
        for _ in range(5):
            if len(busy.messages) == 60:
                break
            d.once(now=time.time() + 3600 * 0.75)
        assert len(busy.messages) == 60 and all(d.store.get(i).fails == 0 for i in ids)
        assert busy.refused_sessions <= 8, busy.refused_sessions  # fewer sessions asked for, not 8 each run
    finally:
        d.close()


def test_the_throttle_converges_under_a_relays_hidden_ceiling(smtp_server, tmp_path):
    capped = smtp_server(ceiling=5)
    conf = write(tmp_path, relay_yaml(capped, "capped", connections=2), server="    max-fails: 10\n")
    d = Daemon(load(conf))
    enqueue(d.cfg, 45)
    start = time.monotonic()
    while len(capped.messages) < 45 and time.monotonic() - start < 60:
        d.once(now=time.time() + 3600 * 0.5)  # what was refused is due again
    assert len(capped.messages) == 45
    [state] = d.dispatcher.relay_states()
    assert state["rate"] is not None and state["rate"] <= 5 * 1.1, state  # learnt, under the ceiling
    # After the first pushbacks the relay refuses little: the last 20 deliveries kept to its pace.
    tail = capped.accepted_at[-20:]
    assert (tail[-1] - tail[0]) >= 19 / 5 * 0.9
    assert capped.refused_messages <= 10, capped.refused_messages
    assert all(d.store.get(m).fails == 0 for m in [x.id for x in d.store.list_messages(limit=100)])
    d.close()


def test_several_relays_at_once_down_busy_and_capped_delivery_goes_on(smtp_server, tmp_path, monkeypatch):
    monkeypatch.setattr(health, "COOL_OFF_FIRST", 0.5)
    down, busy, capped = smtp_server(), smtp_server(max_sessions=1), smtp_server(ceiling=20)
    conf = write(tmp_path, relay_yaml(down, "down", priority=1) + relay_yaml(busy, "busy", priority=2, connections=4)
                 + relay_yaml(capped, "capped", priority=2, connections=4), server="    max-fails: 10\n")
    down.stop()
    # Closed even when an assertion fails: its sessions' sockets, left to the garbage collector,
    # would fail whichever later test is running when it collects them (ResourceWarning).
    with closing(Daemon(load(conf))) as d:
        ids = enqueue(d.cfg, 80)
        deadline = time.monotonic() + 60
        while len(busy.messages) + len(capped.messages) < 80 and time.monotonic() < deadline:
            d.once(now=time.time() + 1800)
        assert len(busy.messages) + len(capped.messages) == 80
        assert len(busy.messages) >= 10 and len(capped.messages) >= 10  # shared, and each pushed back on its own
        assert Counter(d.store.get(i).status for i in ids) == {Status.SENT: 80}
        assert all(d.store.get(i).fails == 0 for i in ids)
        down.restart()
        # Its cool-off doubled at each probe the loop made, as many as the machine's speed allowed: wait it out.
        [cool] = [r["down_until"] for r in d.dispatcher.relay_states() if r["name"] == "down"]
        assert cool is not None and wait_until(lambda: time.time() > cool + 0.01, timeout=120)  # shown to the ms
        enqueue(d.cfg, 5)
        d.once()
        assert len(down.messages) == 5  # back, and first again


def test_status_shows_each_relays_state_from_the_running_daemon(smtp_server, tmp_path):
    up, gone = smtp_server(), smtp_server()
    conf = write(tmp_path, relay_yaml(gone, "gone") + relay_yaml(up, "up", quota={"per-day": 100}))
    gone.stop()
    daemon = DaemonProcess(conf).ready()
    try:
        client = Client(load(conf))
        client.enqueue(Email(sender="a@example.com", to="b@example.net", text="x"))
        client.close()
        assert wait_until(lambda: len(up.messages) == 1, timeout=30)

        def relays() -> list[dict]:
            from tests.conftest import run_cli

            out = run_cli("status", "--json", "-c", str(conf))
            assert out.returncode == 0, out.stderr.decode()
            return json.loads(out.stdout)["relays"]

        assert wait_until(lambda: [r.get("state") for r in relays()] == ["down", "up"], timeout=30)
        gone_state, up_state = relays()
        assert "Connection refused" in gone_state["last_reply"] and gone_state["since"] > 0
        assert up_state["quota_used_today"] >= 1 and up_state["last_reply"].startswith("250")
        from tests.conftest import run_cli

        text = run_cli("status", "-c", str(conf)).stdout.decode()
        assert "relay      gone 127.0.0.1:" in text and ": down since " in text, text
        assert "quota: " in text and " of 100 today" in text, text
    finally:
        assert daemon.stop() == 0


def test_several_relays_keep_at_most_a_batch_out_and_stop_cleanly(smtp_server, tmp_path):
    """The fleet keeps the dispatcher's promises: at most `batch` messages out while the
    relays have not answered, and a stop mid-run finishes what is out and ends (what was
    never tried is handed back, due as it was)."""
    import threading

    gate = threading.Event()
    a, b = smtp_server(gate=gate), smtp_server(gate=gate)
    conf = write(tmp_path, relay_yaml(a, "a", priority=1, connections=8)
                 + relay_yaml(b, "b", priority=1, connections=8), server="    batch: 4\n")
    d = Daemon(load(conf))
    ids = enqueue(d.cfg, 20)
    runner = threading.Thread(target=d.once)
    runner.start()
    try:
        assert wait_until(lambda: a.held + b.held >= 1, timeout=30)
        assert not wait_until(lambda: a.held + b.held > 4, timeout=2.0), (a.held, b.held)
        d.dispatcher.stop.set()
    finally:
        gate.set()
        runner.join(30)
    assert not runner.is_alive(), "the run did not end after stop"
    sent = len(a.messages) + len(b.messages)
    assert 1 <= sent <= 8
    statuses = Counter(d.store.get(i).status for i in ids)
    assert statuses[Status.SENT] == sent and statuses[Status.QUEUED] == 20 - sent  # handed back, untried
    d.close()


def test_two_daemons_on_one_postgres_store_share_a_quota(smtp_server, tmp_path, postgres_dsn):
    cheap, dear = smtp_server(), smtp_server()
    relays = relay_yaml(cheap, "cheap", quota={"per-day": 6}) + relay_yaml(dear, "dear")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = Daemon(load(write(tmp_path / "a", relays, database=postgres_block(postgres_dsn))))
    two = Daemon(load(write(tmp_path / "b", relays, database=postgres_block(postgres_dsn))))
    try:
        enqueue(one.cfg, 2)
        assert one.once().dispatched.sent == 2  # the first daemon, still running, counted 2 of 6
        enqueue(two.cfg, 6)
        assert two.once().dispatched.sent == 6
        assert (len(cheap.messages), len(dear.messages)) == (6, 2)  # what the first did not use, the second did
    finally:
        one.close()
        two.close()


def test_after_a_pushback_the_relay_sees_no_more_sessions_than_the_throttle_allows(smtp_server, tmp_path):
    import threading

    capped = smtp_server(ceiling=60)  # low enough that a loaded machine still reaches it
    conf = write(tmp_path, relay_yaml(capped, "capped", connections=8), server="    max-fails: 10\n")
    d = Daemon(load(conf))
    enqueue(d.cfg, 300)
    seen: list[tuple[float, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append((time.monotonic(), capped.active))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        d.once()
    finally:
        done.set()
        watcher.join()
    try:
        assert capped.refused_at, "the relay never pushed back"
        first = capped.refused_at[0]
        after = [n for t, n in seen if t > first + 0.5]  # the sessions in flight then have finished
        assert after and max(after) <= 4, (max(after), capped.refused_messages)  # halved: 8 -> 4 at most
        limit = d.dispatcher.relay_states()[0]["connections"]
        assert capped.active <= limit  # the pooled idle sessions too: a relay counts them as connections
    finally:
        d.close()
