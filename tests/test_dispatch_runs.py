"""Dispatch runs as a whole: how many leases a daemon holds, when the scheduler
runs again, and what a run says in the log. Real SQLite stores, real SMTP
servers on loopback, a real APScheduler."""

from __future__ import annotations

import logging
import socket
import time

from mailmand.config import BackoffConfig, SmtpConfig
from mailmand.daemon import Daemon
from mailmand.dispatcher import Dispatcher, Leases
from mailmand.ingest import Ingester
from mailmand.queues import open_queue
from mailmand.scheduler import DispatchScheduler
from mailmand.stores import Status
from mailmand.stores.sqlite import SQLiteStore
from tests.daemonproc import wait_until
from tests.test_dispatch import enqueue, smtp_for


class SlowToRecord(SQLiteStore):
    """A real SQLite store that takes 40 ms to record each group of outcomes (a busy
    disk), so the relay answers faster than the store records: the case in which
    claims made ahead could pile up. It notes the most leases its owner ever held,
    read from its own rows after each claim (only a claim adds to them)."""

    most = 0

    def claim(self, now: float, limit: int, owner: str, lease: float):  # type: ignore[no-untyped-def]
        got = super().claim(now, limit, owner, lease)
        [(held,)] = self._read("SELECT count(*) FROM messages WHERE status = 'sending' AND lease_owner = ?", (owner,))
        self.most = max(self.most, held)
        return got

    def finish(self, outcomes):  # type: ignore[no-untyped-def]
        time.sleep(0.04)
        return super().finish(outcomes)


def test_a_dispatcher_never_holds_more_than_two_batches(smtp_server, make_config):
    server = smtp_server()
    cfg = make_config(smtp_for(server, connections=4), batch=10)
    enqueue(cfg, 300)
    store = SlowToRecord(cfg.server.database.path, create=True)
    queue = open_queue(cfg.queue, daemon=True)
    try:
        assert Ingester(queue, store).drain().ingested == 300
        dispatcher = Dispatcher(store, cfg.server, owner="me")
        run = dispatcher.run_once()
        dispatcher.close()
        assert run.sent == 300 and store.counts()[Status.SENT] == 300
        # The batch being sent and the one claimed ahead of it: reached (a full batch is
        # always claimed ahead), never passed, however far the records lag behind.
        assert store.most == 2 * cfg.server.batch
        assert dispatcher.leases.count() == 0
    finally:
        queue.close()
        store.close()


def test_a_claim_asks_only_for_the_room_two_batches_leave():
    """The bound is the claim code's, not the timing's: however the held and reserved
    leases stand, a reservation never takes the count past 2 x batch."""
    held = [0]
    leases = Leases(lambda: held[0])
    assert leases.reserve(10) == 10  # nothing held: a full batch
    assert leases.reserve(10) == 10  # the batch claimed ahead
    assert leases.reserve(10) == 0 and leases.count() == 20  # two claims under way: no room
    leases.settle(10)
    leases.settle(10)
    held[0] = 15  # one batch out and half of the next
    assert leases.reserve(10) == 5 and leases.count() == 20
    leases.settle(5)
    held[0] = 20
    t0 = time.monotonic()
    assert leases.reserve(10, wait=0.2) == 0  # waits for room, then gives up
    assert time.monotonic() - t0 >= 0.15
    held[0] = 3
    assert leases.reserve(10) == 10


def closed_port() -> int:
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_scheduler_waits_for_its_tick_while_the_relay_is_unreachable(make_config):
    """A run that could not reach the relay hands back what it never tried, which is
    due at once; the next run waits for the tick (an hour here), not for that."""
    d = Daemon(make_config(SmtpConfig(host="127.0.0.1", port=closed_port(), connections=1, timeout=2.0),
                           batch=5, interval=3600.0, backoff=BackoffConfig(600, 1200)))
    ids = enqueue(d.cfg, 20)
    d.ingester.drain()
    sched = DispatchScheduler(d.dispatcher, d.cfg.server.retention)

    def tried() -> int:
        return sum(d.store.get(i).attempts for i in ids)

    sched.start()
    try:
        assert wait_until(lambda: sched.last is not None and tried() > 0, timeout=30)
        assert sched.last is not None and sched.last.unreachable
        # Nothing else may happen now: a run again would try (and defer) one more message.
        assert not wait_until(lambda: tried() > 1, timeout=1.5)
        assert d.store.counts()[Status.QUEUED] == 19
    finally:
        sched.shutdown()
        d.close()


def info_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mailmand.dispatcher" and r.levelno == logging.INFO]


def test_dispatch_says_what_it_did_once_a_minute(smtp_server, make_config, caplog):
    server = smtp_server(rcpt_replies={"gone@example.com": "550 5.1.1 no such user",
                                       "busy@example.com": "451 4.2.1 mailbox busy"})
    d = Daemon(make_config(smtp_for(server), backoff=BackoffConfig(600, 1200)))
    enqueue(d.cfg, 3)
    enqueue(d.cfg, 1, to="gone@example.com")
    enqueue(d.cfg, 1, to="busy@example.com")
    t0 = time.time()
    caplog.set_level(logging.DEBUG, logger="mailmand.dispatcher")
    try:
        assert d.once(now=t0).dispatched.sent == 3
        assert d.once(now=t0 + 30).dispatched.batches == 0  # nothing due: an idle tick
        assert info_lines(caplog) == []  # within the minute: nothing at INFO
        assert any(r.levelno == logging.DEBUG and r.getMessage().startswith("dispatched 1 batch(es): sent 3")
                   for r in caplog.records)  # each run, at DEBUG
        d.once(now=t0 + 61)  # the minute is over: one line for it
        d.once(now=t0 + 62)
        d.once(now=t0 + 200)  # a quiet minute says nothing
        assert info_lines(caplog) == ["sent 3, deferred 1, failed 1 in the last minute"]
    finally:
        d.close()


def test_sessions_holding_every_lease_go_on_without_waiting_for_the_feed(smtp_server, make_config):
    """As many sessions as leases (4 sessions, batch 2): a session with messages in
    flight that asks for another must not wait inside the feed for room that only
    its own messages' outcomes can free. One run sends everything."""
    server = smtp_server()
    cfg = make_config(smtp_for(server, connections=4), batch=2)
    enqueue(cfg, 60)
    store = SlowToRecord(cfg.server.database.path, create=True)
    queue = open_queue(cfg.queue, daemon=True)
    try:
        assert Ingester(queue, store).drain().ingested == 60
        dispatcher = Dispatcher(store, cfg.server, owner="me")
        run = dispatcher.run_once()
        dispatcher.close()
        assert run.sent == 60 and store.counts()[Status.SENT] == 60
        assert store.most <= 2 * cfg.server.batch
    finally:
        queue.close()
        store.close()
