"""Dispatch against real SMTP servers: delivery, retries, scheduling, TLS/AUTH,
crash, latency and graceful stop. The clock is injected where time matters."""

from __future__ import annotations

import time
from collections import Counter
from email import message_from_bytes

import pytest

from mailmand import Client, Email
from mailmand.cli import main
from mailmand.config import AuthConfig, BackoffConfig, SmtpConfig, replace
from mailmand.daemon import Daemon
from mailmand.errors import AlreadyRunning
from mailmand.stores import Status
from tests.daemonproc import DaemonProcess, wait_until


def smtp_for(server, **kw) -> SmtpConfig:
    return SmtpConfig(host=server.host, port=server.port, timeout=5.0, data_timeout=5.0, **kw)


def enqueue(cfg, n: int = 1, **kw) -> list[str]:
    client = Client(cfg)
    try:
        return [client.enqueue(Email(sender="app@example.com", to=kw.pop("to", "ann@example.com"),
                                     subject=f"m{i}", text="hello", **kw)) for i in range(n)]
    finally:
        client.close()


def message_ids(server) -> Counter[str]:
    return Counter(message_from_bytes(m.data)["Subject"] for m in server.messages)


def test_200_messages_once_each_over_few_connections(smtp_server, write_config, capsys):
    server = smtp_server()
    conf = write_config(server.port, extra_server="    batch: 50\n", smtp_extra="      connections: 1\n")
    assert main(["send", "-c", str(conf), "--from", "a@example.com", "--to", "b@example.com",
                 "--subject", "probe", "--text", "x"]) == 0
    from mailmand.config import load
    cfg = load(conf)
    enqueue(cfg, 199)
    assert main(["--once", "-c", str(conf)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ingested 200, sent 200, deferred 0, failed 0, expired 0"
    counts = message_ids(server)
    assert len(server.messages) == 200 and set(counts.values()) == {1}
    assert server.connections == 1  # as configured: one session, reused across the four batches


def test_once_sends_while_it_ingests_and_misses_nothing(smtp_server, make_config):
    """`--once` ingests in transactions of 500 beside dispatch: mail stored after a
    dispatch run began is sent by a later run, each message once."""
    server = smtp_server()
    d = Daemon(make_config(smtp_for(server, connections=2), batch=50))
    enqueue(d.cfg, 1234)
    result = d.once()
    d.close()
    assert result.ingested.ingested == 1234 and result.dispatched.sent == 1234
    assert result.dispatched.batches >= 1234 // 50
    counts = message_ids(server)
    assert len(counts) == 1234 and set(counts.values()) == {1}


def test_once_summary_line(smtp_server, write_config, capsys):
    server = smtp_server(rcpt_replies={"bad@example.com": "550 5.1.1 no such user"})
    conf = write_config(server.port)
    from mailmand.config import load
    cfg = load(conf)
    enqueue(cfg, 3)
    enqueue(cfg, 1, to="bad@example.com")
    capsys.readouterr()
    assert main(["--once", "-c", str(conf)]) == 0
    assert capsys.readouterr().out.strip() == "ingested 4, sent 3, deferred 0, failed 1, expired 0"


def daemon_for(make_config, server, **server_kw) -> Daemon:
    server_kw.setdefault("backoff", BackoffConfig(min=30, max=600))
    smtp_kw = server_kw.pop("smtp_kw", {})
    return Daemon(make_config(smtp_for(server, **smtp_kw), **server_kw))


def test_451_defers_with_backoff_then_delivers(smtp_server, make_config):
    server = smtp_server(data_reply="451 4.3.0 try again later")
    d = daemon_for(make_config, server)
    [mid] = enqueue(d.cfg)
    t0 = time.time()
    assert d.once(now=t0).dispatched.deferred == 1
    info = d.store.get(mid)
    assert info.status is Status.DEFERRED and "451 4.3.0 try again later" in info.last_error
    assert t0 + 30 <= info.due_at <= t0 + 600
    server.data_reply = None
    assert d.once(now=t0 + 1).dispatched.sent == 0  # not due yet: no hammering
    assert d.once(now=info.due_at).dispatched.sent == 1
    assert d.store.get(mid).status is Status.SENT
    assert [a.outcome for a in d.store.attempts(mid)] == ["temporary", "sent"]
    assert len(server.messages) == 1
    d.close()


def test_550_fails_at_once_with_the_reply(smtp_server, make_config):
    server = smtp_server(rcpt_replies={"ann@example.com": "550 5.1.1 no such user"})
    d = daemon_for(make_config, server)
    [mid] = enqueue(d.cfg)
    assert d.once().dispatched.failed == 1
    info = d.store.get(mid)
    assert info.status is Status.FAILED and info.last_code == 550 and "no such user" in info.last_error
    [attempt] = d.store.attempts(mid)
    assert attempt.code == 550 and attempt.outcome == "permanent"
    assert d.once(now=time.time() + 10_000).dispatched.failed == 0  # never tried again
    assert server.messages == []
    d.close()


def test_max_fails_is_honoured(smtp_server, make_config):
    server = smtp_server(data_reply="451 4.3.0 busy")
    d = daemon_for(make_config, server, max_fails=3, max_time=10**6)
    [mid] = enqueue(d.cfg)
    now = time.time()
    for expected in (Status.DEFERRED, Status.DEFERRED, Status.FAILED):
        d.once(now=now)
        info = d.store.get(mid)
        assert info.status is expected
        now = info.due_at
    assert info.attempts == 3 and "max-fails (3) reached" in info.last_error
    assert d.once(now=now + 10**5).dispatched.failed == 0
    d.close()


def test_max_time_expires(smtp_server, make_config):
    server = smtp_server(data_reply="451 4.3.0 busy")
    d = daemon_for(make_config, server, max_fails=100, max_time=120, backoff=BackoffConfig(30, 60))
    [mid] = enqueue(d.cfg)
    d.ingester.drain()
    t0 = time.time()
    now = t0
    while d.store.get(mid).status is not Status.EXPIRED:
        d.once(now=now)
        now = d.store.get(mid).due_at
        assert now <= t0 + 121, "the next try never lands past the deadline"
    info = d.store.get(mid)
    assert "max-time" in info.last_error and info.finished_at is not None
    tries = len(server.messages)
    assert d.once(now=now + 10**5).dispatched.expired == 0
    assert len(server.messages) == tries
    # One that waited past max-time before anyone could send it expires without a connection.
    [late] = enqueue(d.cfg)
    before = server.connections
    assert d.once(now=time.time() + 500).dispatched.expired == 1
    assert d.store.get(late).status is Status.EXPIRED and server.connections == before
    d.close()


def test_the_max_time_clock_stands_still_while_a_message_is_held(smtp_server, make_config):
    """Held for an hour past its max-time of two minutes, released, it is sent, not
    expired; its clock runs on from where it stood when held."""
    server = smtp_server(data_reply="451 4.3.0 busy")
    d = daemon_for(make_config, server, max_fails=100, max_time=120, backoff=BackoffConfig(30, 30))
    [mid] = enqueue(d.cfg)
    t0 = time.time()
    d.once(now=t0)  # one try, deferred
    assert d.store.hold([mid], t0 + 10) == [mid]
    assert d.once(now=t0 + 3600).dispatched.expired == 0  # held: never claimed, so never expired
    d.store.release([mid], t0 + 3610)
    # 20 s of its clock used, not 3,620: a refusal now defers it again, within what is left.
    assert d.once(now=t0 + 3620).dispatched.deferred == 1
    info = d.store.get(mid)
    assert info.status is Status.DEFERRED and info.due_at == pytest.approx(t0 + 3650, abs=1)
    server.data_reply = None
    assert d.once(now=info.due_at).dispatched.sent == 1
    assert d.store.get(mid).status is Status.SENT
    # Held and released again, the clock runs on where it stood: 100 s more of it is past max-time.
    [late] = enqueue(d.cfg)
    d.ingester.drain()
    t1 = time.time()
    d.store.hold([late], t1 + 10)
    d.store.release([late], t1 + 1000)
    assert d.once(now=t1 + 1000 + 111).dispatched.expired == 1  # 10 + 111 s > 120 s
    assert d.store.get(late).status is Status.EXPIRED
    d.close()


def test_mixed_recipients_are_recorded_each(smtp_server, make_config):
    server = smtp_server(rcpt_replies={"gone@example.com": "550 5.1.1 gone",
                                       "later@example.com": "451 4.2.1 mailbox busy"})
    d = daemon_for(make_config, server)
    [mid] = enqueue(d.cfg, to=["ok@example.com", "gone@example.com", "later@example.com"])
    d.once()
    info = d.store.get(mid)
    assert info.status is Status.DEFERRED
    rcpt = {r.address: r for r in d.store.recipients(mid)}
    assert (rcpt["ok@example.com"].status, rcpt["ok@example.com"].code) == ("sent", 250)
    assert (rcpt["gone@example.com"].status, rcpt["gone@example.com"].code) == ("failed", 550)
    assert (rcpt["later@example.com"].status, rcpt["later@example.com"].code) == ("deferred", 451)
    assert [list(m.rcpt_tos) for m in server.messages] == [["ok@example.com"]]
    server.rcpt_replies = {}
    d.once(now=info.due_at)
    assert d.store.get(mid).status is Status.SENT
    # Only the temporarily refused recipient was tried again.
    assert [list(m.rcpt_tos) for m in server.messages] == [["ok@example.com"], ["later@example.com"]]
    assert {r.address: r.status for r in d.store.recipients(mid)}["later@example.com"] == "sent"
    d.close()


def test_send_later_is_not_sent_before_its_time_injected_clock(smtp_server, make_config):
    server = smtp_server()
    d = daemon_for(make_config, server)
    client = Client(d.cfg)
    t0 = time.time()
    mid = client.send_later(Email(sender="a@example.com", to="b@example.com", text="x"), "2s")
    client.close()
    assert d.once(now=t0 + 1.0).dispatched.sent == 0
    assert d.store.get(mid).status is Status.QUEUED and server.messages == []
    assert d.once(now=t0 + 2.5).dispatched.sent == 1
    d.close()


def test_leases_that_ran_out_go_back(smtp_server, make_config):
    server = smtp_server()
    d = daemon_for(make_config, server, lease=60)
    ids = enqueue(d.cfg, 3)
    d.ingester.drain()
    now = time.time()
    assert len(d.store.claim(now, 10, "a-dead-peer", 60)) == 3
    assert d.once(now=now + 30).dispatched.sent == 0  # still leased
    assert d.once(now=now + 61).dispatched.sent == 3
    assert all(d.store.get(i).status is Status.SENT for i in ids)
    d.close()


def test_its_own_lease_that_ran_out_goes_back_too(smtp_server, make_config):
    """Claims in the daemon's name that none of its runs holds (a restart after a
    hand-back that failed) go back once their lease has run out: its own sweep takes them."""
    server = smtp_server()
    d = daemon_for(make_config, server, lease=60)
    ids = enqueue(d.cfg, 3)
    d.ingester.drain()
    now = time.time()
    assert len(d.store.claim(now, 10, d.dispatcher.owner, 60)) == 3
    assert d.dispatcher.held() == []  # claimed under its name, held by none of its runs
    assert d.once(now=now + 30).dispatched.sent == 0  # still leased
    assert d.once(now=now + 61).dispatched.sent == 3
    assert all(d.store.get(i).status is Status.SENT for i in ids)
    d.close()


def test_auth_good_and_bad_credentials(smtp_server, make_config, tmp_path):
    server = smtp_server(auth=("app", "s3cret-pw"))
    d = daemon_for(make_config, server, smtp_kw={"auth": AuthConfig("app", "s3cret-pw")})
    [good] = enqueue(d.cfg)
    d.once()
    assert d.store.get(good).status is Status.SENT
    d.close()
    d = daemon_for(make_config, server, smtp_kw={"auth": AuthConfig("app", "wrong-pw")})
    [bad] = enqueue(d.cfg)
    d.once()
    info = d.store.get(bad)
    assert info.status is Status.DEFERRED and "authentication failed" in info.last_error
    assert "wrong-pw" not in info.last_error and "wrong-pw" not in repr(d.cfg)
    d.close()


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_tls_verified_and_untrusted_refused(smtp_server, make_config, tls_ca, mode):
    server = smtp_server(tls=mode)
    d = daemon_for(make_config, server, smtp_kw={"tls": mode, "ca_file": tls_ca.ca_file})
    [ok] = enqueue(d.cfg)
    d.once()
    assert d.store.get(ok).status is Status.SENT
    d.close()
    d = daemon_for(make_config, server, smtp_kw={"tls": mode})  # system CAs do not know trustme's
    [refused] = enqueue(d.cfg)
    d.once()
    info = d.store.get(refused)
    assert info.status is Status.DEFERRED and "certificate verify failed" in info.last_error
    d.close()
    d = daemon_for(make_config, server, smtp_kw={"tls": mode, "verify": False})  # asked for explicitly
    d.once(now=info.due_at)
    assert d.store.get(refused).status is Status.SENT
    d.close()


def test_second_daemon_on_the_same_spool_is_refused(make_config, smtp_server, write_config):
    server = smtp_server()
    d = daemon_for(make_config, server)
    with pytest.raises(AlreadyRunning, match="already running"):
        daemon_for(make_config, server)
    d.close()
    conf = write_config(server.port)
    first = DaemonProcess(conf).ready()
    from tests.conftest import run_cli
    second = run_cli("run", "-c", str(conf), timeout=30)
    assert second.returncode == 1
    assert b"already running" in second.stderr and b"Traceback" not in second.stderr
    assert first.stop() == 0


def test_real_daemon_wakes_for_new_and_scheduled_mail_not_on_the_clock(smtp_server, write_config):
    server = smtp_server()
    # An hour between ticks: what arrives during this test came through the wake-ups
    # (watchdog wakes ingest, ingest pokes dispatch, a due time sets a timer), not polling.
    conf = write_config(server.port, interval="1h")
    from mailmand.config import load
    cfg = load(conf)
    daemon = DaemonProcess(conf).ready()
    try:
        client = Client(cfg)
        for n in range(1, 4):
            client.enqueue(Email(sender="a@example.com", to="b@example.com", subject=f"now{n}", text="x"))
            assert wait_until(lambda n=n: len(server.messages) == n, timeout=20)
        later = client.send_later(Email(sender="a@example.com", to="b@example.com", subject="later", text="x"), "2s")
        assert wait_until(lambda: len(server.messages) == 4, timeout=20)
        client.close()
    finally:
        assert daemon.stop() == 0
    from mailmand.stores import open_store
    store = open_store(cfg.server.database)
    info, [tried] = store.get(later), store.attempts(later)
    store.close()
    assert tried.at >= info.send_after, "sent before its time"


def test_deferred_mail_goes_out_when_due_on_a_running_daemon(smtp_server, write_config):
    server = smtp_server(data_reply="451 4.3.0 not yet")
    conf = write_config(server.port)  # backoff 1s..2s
    from mailmand.config import load
    daemon = DaemonProcess(conf).ready()
    try:
        [mid] = enqueue(load(conf))
        daemon.wait_for(f"deferred {mid} until")
        server.data_reply = None
        assert wait_until(lambda: len(server.messages) == 1, timeout=10)
    finally:
        assert daemon.stop() == 0
    from mailmand.stores import open_store
    store = open_store(load(conf).server.database)
    assert store.get(mid).status is Status.SENT and store.get(mid).attempts == 2
    store.close()


def test_sigkill_mid_run_then_restart_delivers_everything(smtp_server, write_config):
    server = smtp_server()
    conf = write_config(server.port, extra_server="    batch: 50\n", smtp_extra="      connections: 4\n")
    from mailmand.config import load
    cfg = load(conf)
    client = Client(cfg)
    subjects = [f"m{i}" for i in range(1000)]
    for s in subjects:
        client.enqueue(Email(sender="a@example.com", to="b@example.com", subject=s, text="x"))
    client.close()
    server.stall = 0.002  # so the kill lands mid-run
    daemon = DaemonProcess(conf).ready()
    assert wait_until(lambda: len(server.messages) >= 300, timeout=60)
    daemon.kill()
    got_at_kill = len(server.messages)
    assert got_at_kill < 1000, "the kill must land in the middle of the run"
    from mailmand.stores import open_store
    store = open_store(cfg.server.database)
    held = store.counts()[Status.SENDING]  # claimed by the dead daemon, leases still running
    store.close()
    server.stall = 0
    restarted = DaemonProcess(conf).ready()
    assert wait_until(lambda: set(message_ids(server)) == set(subjects), timeout=60)
    assert restarted.stop() == 0
    counts = message_ids(server)
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= 50, f"{duplicates} duplicates: more than one batch was in flight"
    # The lazy feed claims the next batch while the last of the current one is in flight:
    # a kill mid-run always leaves leases behind, and the restart takes them back at once
    # (the lease is 5 minutes: waiting it out would fail the wait above).
    assert held > 0
    assert f"and {held} claimed message(s) from a previous run" in restarted.log


def test_five_sigkills_during_delivery_lose_nothing(smtp_server, write_config):
    """Kill -9 the daemon five times while it delivers 1,500, restarting each time.

    A copy is sent twice only when the relay took it and the daemon died before
    committing the outcome, and such a message is still `sending` under the
    dead daemon's lease. So every duplicate must be among the leases a killed
    daemon held (read from the store between kill and restart), once per kill
    that caught it: at most the batch being sent and the one claimed ahead, per kill."""
    total, batch, step = 1500, 50, 200
    server = smtp_server()
    conf = write_config(server.port, extra_server=f"    batch: {batch}\n",
                        smtp_extra="      connections: 4\n")
    from mailmand.config import load
    from mailmand.stores import open_store
    cfg = load(conf)
    client = Client(cfg)
    subject_of = {client.enqueue(Email(sender="a@example.com", to="b@example.com", subject=f"m{i}",
                                       text="x")): f"m{i}" for i in range(total)}
    client.close()
    server.stall = 0.002  # so that every kill lands mid-delivery
    at_kill: list[int] = []
    held: list[list[str]] = []  # per kill: what the dead daemon had claimed and not committed
    daemon = DaemonProcess(conf).ready()
    try:
        for _ in range(5):
            target = (at_kill[-1] if at_kill else 0) + step
            assert wait_until(lambda t=target: len(server.messages) >= t, timeout=60), daemon.log
            daemon.kill()
            at_kill.append(len(server.messages))
            assert 0 < at_kill[-1] < total, f"kill {len(at_kill)} must land mid-delivery: {at_kill}"
            store = open_store(cfg.server.database)
            held.append([subject_of[m.id] for m in store.list_messages(Status.SENDING, limit=total)])
            store.close()
            assert held[-1], f"kill {len(at_kill)} left no claim behind: it did not land mid-batch"
            assert len(held[-1]) <= 2 * batch
            daemon = DaemonProcess(conf).ready()
            # The restart takes the dead daemon's claims back at once (the lease is 5 minutes).
            assert f"and {len(held[-1])} claimed message(s) from a previous run" in daemon.log
        server.stall = 0
        assert wait_until(lambda: set(message_ids(server)) == set(subject_of.values()), timeout=60), \
            f"lost: {sorted(set(subject_of.values()) - set(message_ids(server)))[:20]}"
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    store = open_store(cfg.server.database)
    counts = store.counts()
    store.close()
    assert counts[Status.SENT] == total and counts[Status.SENDING] == 0, counts
    copies = message_ids(server)
    extra = {s: n - 1 for s, n in copies.items() if n > 1}
    caught = Counter(s for round_ in held for s in round_)
    assert all(n <= caught[s] for s, n in extra.items()), \
        f"sent twice without a dead daemon's lease on it: {sorted(s for s in extra if extra[s] > caught[s])}"
    assert sum(extra.values()) <= sum(len(h) for h in held)
    print(f"\nkills at {at_kill} of {total}; leases held at each kill {[len(h) for h in held]}; "
          f"duplicates {sum(extra.values())}")


def test_sigterm_during_a_batch_loses_nothing(smtp_server, write_config):
    server = smtp_server(stall=0.05)
    conf = write_config(server.port, extra_server="    batch: 100\n", smtp_extra="      connections: 1\n")
    from mailmand.config import load
    cfg = load(conf)
    ids = enqueue(cfg, 100)
    daemon = DaemonProcess(conf).ready()
    assert wait_until(lambda: len(server.messages) >= 5, timeout=20)
    assert daemon.stop() == 0  # SIGTERM
    sent_before = len(server.messages)
    assert sent_before < 100
    from mailmand.stores import open_store
    store = open_store(cfg.server.database)
    counts = store.counts()
    assert counts[Status.SENDING] == 0, "a graceful stop leaves nothing claimed"
    assert counts[Status.SENT] == sent_before  # what went out is recorded as sent
    store.close()
    server.stall = 0
    assert main(["--once", "-c", str(conf)]) == 0
    assert sorted(message_ids(server)) == sorted(f"m{i}" for i in range(100))
    assert len(ids) == 100


def test_an_unreachable_relay_burns_no_attempt_on_mail_it_never_tried(make_config):
    import socket
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = Daemon(make_config(SmtpConfig(host="127.0.0.1", port=port, connections=2, timeout=2.0), batch=10))
    ids = enqueue(d.cfg, 30)
    run = d.once().dispatched
    assert 1 <= run.deferred <= 2 and run.sent == 0 and run.batches <= 2  # the batch, and the one claimed ahead
    assert run.released == 10 * run.batches - run.deferred  # what was claimed and never tried: handed back
    infos = [d.store.get(i) for i in ids]
    deferred = [i for i in infos if i.status is Status.DEFERRED]
    assert len(deferred) == run.deferred and "Connection refused" in deferred[0].last_error
    assert all(i.attempts == 0 for i in infos if i.status is Status.QUEUED)
    assert d.store.counts()[Status.SENDING] == 0
    d.close()


def test_a_reload_under_steady_load_applies_between_batches(smtp_server, make_config):
    import threading
    first, second = smtp_server(stall=0.005), smtp_server()
    d = daemon_for(make_config, first, batch=10, smtp_kw={"connections": 1})
    enqueue(d.cfg, 200)
    d.ingester.drain()
    run = threading.Thread(target=d.dispatcher.run_once)
    run.start()
    assert wait_until(lambda: len(first.messages) >= 20, timeout=20)
    d.dispatcher.configure(replace(d.cfg.server, smtp=smtp_for(second, connections=1)))
    run.join(timeout=60)
    assert not run.is_alive()
    # The batch in flight finished on the old relay; the rest went to the new one, nothing twice.
    assert len(first.messages) < 200 and len(second.messages) > 0
    assert len(first.messages) + len(second.messages) == 200
    assert d.store.counts()[Status.SENT] == 200
    d.close()


def test_a_batch_slower_than_its_lease_is_not_sent_twice(smtp_server, make_config):
    server = smtp_server(stall=0.15)
    d = daemon_for(make_config, server, batch=10, lease=1.0, smtp_kw={"connections": 1})
    ids = enqueue(d.cfg, 12)
    run = d.once().dispatched  # the first batch alone outlasts its 1 s lease
    assert run.sent == 12
    assert len(server.messages) == 12 and set(message_ids(server).values()) == {1}
    assert all(d.store.get(i).status is Status.SENT for i in ids)
    d.close()


def test_an_unreachable_relay_is_retried_ever_later(make_config):
    """The whole path (store → dispatcher → policy): unanswered attempts
    make each wait longer, not `backoff.min` forever; none of them counts as a fail."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = Daemon(make_config(SmtpConfig(host="127.0.0.1", port=port, connections=1, timeout=2.0),
                           max_fails=2, max_time=10**6, backoff=BackoffConfig(10, 10**5)))
    [mid] = enqueue(d.cfg)
    d.ingester.drain()
    now, waits = time.time(), []
    for _ in range(6):
        d.once(now=now)
        info = d.store.get(mid)
        assert info.status is Status.DEFERRED and info.fails == 0
        waits.append(info.due_at - now)
        now = info.due_at
    d.close()
    # Doubling under ±25 % jitter: each wait is at least 1.5 / 1.25 = 1.2 times the one before.
    assert all(later >= 1.2 * earlier for earlier, later in zip(waits, waits[1:], strict=False)), waits
    assert waits[-1] >= 10 * 2**5 * 0.75, waits


def test_an_outage_is_bounded_by_max_time_not_max_fails(make_config):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = Daemon(make_config(SmtpConfig(host="127.0.0.1", port=port, connections=1, timeout=2.0),
                           max_fails=2, max_time=600, backoff=BackoffConfig(30, 60)))
    [mid] = enqueue(d.cfg)
    d.ingester.drain()
    now = time.time()
    for _ in range(5):  # five refused connections: not the message's fault
        d.once(now=now)
        info = d.store.get(mid)
        assert info.status is Status.DEFERRED and info.fails == 0
        now = info.due_at
    assert len(d.store.attempts(mid)) == d.store.get(mid).attempts == 5  # every try on record, one count
    d.once(now=now + 600)
    assert d.store.get(mid).status is Status.EXPIRED
    d.close()


def test_retry_sends_only_to_recipients_not_yet_delivered(smtp_server, make_config):
    server = smtp_server(rcpt_replies={"busy@example.com": "451 4.2.1 mailbox busy"})
    d = daemon_for(make_config, server, max_fails=1)
    [mid] = enqueue(d.cfg, to=["ok@example.com", "busy@example.com"])
    d.once()
    assert d.store.get(mid).status is Status.FAILED  # ok@ got it; busy@ used up max-fails
    server.rcpt_replies = {}
    assert d.store.requeue(mid, time.time()) == 1  # what `mailmand retry ID` does
    d.once()
    assert d.store.get(mid).status is Status.SENT
    assert [sorted(m.rcpt_tos) for m in server.messages] == [["ok@example.com"], ["busy@example.com"]]
    d.close()


def test_two_daemons_on_one_store_are_refused(make_config, smtp_server, tmp_path):
    server = smtp_server()
    first = daemon_for(make_config, server)
    assert first.store.counts()[Status.QUEUED] == 0  # the store is opened (and locked) on first use
    second = Daemon(dataclasses_replace_queue(first.cfg, tmp_path / "other-spool"))
    with pytest.raises(AlreadyRunning, match="the store"):
        second.once()
    second.close()
    first.close()


def dataclasses_replace_queue(cfg, path):
    return replace(cfg, queue=replace(cfg.queue, path=path))


def test_stopping_mid_run_is_not_read_as_an_unreachable_relay(smtp_server, make_config):
    import threading
    server = smtp_server(stall=0.05)
    d = daemon_for(make_config, server, batch=20, smtp_kw={"connections": 1})
    enqueue(d.cfg, 20)
    d.ingester.drain()
    got = []
    run = threading.Thread(target=lambda: got.append(d.dispatcher.run_once()))
    run.start()
    assert wait_until(lambda: len(server.messages) >= 3, timeout=20)
    d.dispatcher.stop.set()
    run.join(timeout=30)
    [result] = got
    assert result.released > 0 and not result.unreachable  # stopping hands back; the relay was fine
    assert d.store.counts()[Status.SENDING] == 0
    d.close()


def test_the_daemon_purges_by_its_own_retention(smtp_server, write_config, capsys):
    server = smtp_server()
    conf = write_config(server.port, extra_server="    retention: 1s\n")
    from mailmand.config import load
    ids = enqueue(load(conf), 3)
    assert main(["--once", "-c", str(conf)]) == 0
    time.sleep(1.2)  # older than the retention now
    daemon = DaemonProcess(conf).ready()
    try:
        daemon.wait_for("purged 3 finished message(s) older than retention")
    finally:
        assert daemon.stop() == 0
    from mailmand.errors import NotFound
    from mailmand.stores import open_store
    store = open_store(load(conf).server.database)
    for mid in ids:
        with pytest.raises(NotFound):
            store.get(mid)
    store.close()


def test_sigint_stops_gracefully(smtp_server, write_config):
    import signal
    server = smtp_server(stall=0.05)
    conf = write_config(server.port, extra_server="    batch: 100\n", smtp_extra="      connections: 1\n")
    from mailmand.config import load
    cfg = load(conf)
    enqueue(cfg, 60)
    daemon = DaemonProcess(conf).ready()
    assert wait_until(lambda: len(server.messages) >= 3, timeout=20)
    daemon.signal(signal.SIGINT)  # Ctrl-C in a terminal
    assert daemon.wait() == 0
    assert "stopping: finishing messages in flight" in daemon.log and daemon.log.rstrip().endswith("stopped")
    assert "Traceback" not in daemon.log and "KeyboardInterrupt" not in daemon.log
    from mailmand.stores import open_store
    store = open_store(cfg.server.database)
    counts = store.counts()
    store.close()
    assert counts[Status.SENDING] == 0 and counts[Status.SENT] == len(server.messages) < 60


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_store_files_are_private_whatever_the_umask(make_config, tmp_path, umask):
    import os
    import stat
    cfg = make_config()
    db = tmp_path / "var" / "lib" / "mailmand.db"
    cfg = replace(cfg, server=replace(cfg.server, database=replace(cfg.server.database, path=db)))
    old = os.umask(umask)
    try:
        d = Daemon(cfg)
        d.store.counts()
        enqueue(d.cfg, 2)
        d.ingester.drain()  # a write: the -wal and -shm files exist now
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir()}
        modes["dir"] = stat.S_IMODE(db.parent.stat().st_mode)
        d.close()
    finally:
        os.umask(old)
    assert modes == {"dir": 0o700, "mailmand.db": 0o600, "mailmand.db-wal": 0o600, "mailmand.db-shm": 0o600,
                     "mailmand.db.lock": 0o640}


def test_an_existing_store_others_can_read_is_made_private(make_config, caplog):
    import stat
    d = Daemon(make_config())
    d.store.counts()
    d.close()
    db = d.cfg.server.database.path
    db.chmod(0o644)  # as an older mailmand made it (0640), or worse
    d = Daemon(make_config())
    with caplog.at_level("WARNING"):
        d.store.counts()
    d.close()
    assert f"{db} was open to other users (mode 644): made it 600, the daemon's alone" in caplog.text
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_a_refused_start_leaves_no_lock_behind(write_config, tmp_path):
    import sqlite3
    conf = write_config(9)
    db = tmp_path / "mailmand.db"
    made = sqlite3.connect(db)  # a store from a newer mailmand
    made.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    made.execute("INSERT INTO schema_version VALUES (99)")
    made.commit()
    made.close()
    from tests.conftest import run_cli
    out = run_cli("run", "-c", str(conf), timeout=30)
    assert out.returncode == 1 and b"schema version 99" in out.stderr and b"upgrade mailmand" in out.stderr
    assert not (tmp_path / "mailmand.db.lock").exists()
