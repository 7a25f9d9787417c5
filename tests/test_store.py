"""The store contract. One suite for every engine (SQLite today), on real files."""

from __future__ import annotations

import time

import pytest

from mailmand.config import DatabaseConfig
from mailmand.errors import InvalidState, NotFound
from mailmand.message import Record
from mailmand.stores import Status, open_store
from mailmand.stores.base import Attempt, Outcome, RecipientOutcome

ENGINES = ["sqlite3"]


@pytest.fixture(params=ENGINES)
def store(request, tmp_path):
    s = open_store(DatabaseConfig(engine=request.param, path=tmp_path / "store.db"))
    yield s
    s.close()


def rec(i: int, priority: int = 0, send_after: float = 0.0, created: float = 1000.0) -> Record:
    raw = f"Subject: s{i}\r\n\r\nbody {i}\r\n".encode()
    return Record(f"id{i}", "a@x.org", ("b@x.org", "c@x.org"), raw, priority, send_after, None, created + i)


def attempt(at: float, outcome: str = "sent", code: int | None = 250) -> Attempt:
    return Attempt(at, "relay:25", code, f"{code} reply", 0.01, outcome)


def test_insert_is_idempotent_and_keeps_the_body(store):
    assert store.insert([rec(1), rec(2)]) == 2
    assert store.insert([rec(1), rec(3)]) == 1
    assert store.raw("id1") == rec(1).raw
    info = store.get("id1")
    assert (info.status, info.subject, info.rcpt_to, info.size) == (Status.QUEUED, "s1", ("b@x.org", "c@x.org"),
                                                                    len(rec(1).raw))
    assert store.counts()[Status.QUEUED] == 3
    with pytest.raises(NotFound):
        store.get("nope")


def test_claim_order_lease_and_due_time(store):
    store.insert([rec(1), rec(2, priority=5), rec(3), rec(4, send_after=5000.0)])
    got = store.claim(now=2000.0, limit=2, owner="me", lease=60)
    assert [c.id for c in got] == ["id2", "id1"]  # priority first, then the longest due
    assert got[0].raw == rec(2).raw and got[0].rcpt_to == ("b@x.org", "c@x.org")
    assert [c.id for c in store.claim(now=2000.0, limit=10, owner="other", lease=60)] == ["id3"]
    assert store.claim(now=2000.0, limit=10, owner="other", lease=60) == []  # id4 is not due
    assert store.counts()[Status.SENDING] == 3
    assert store.next_due() == 5000.0
    assert store.release(None, now=2030.0) == 0  # leases still running
    assert store.release(None, now=2061.0) == 3  # ran out: back to the queue
    assert store.counts()[Status.QUEUED] == 4


def test_finish_records_attempt_recipients_and_status(store):
    store.insert([rec(1)])
    [c] = store.claim(2000.0, 10, "me", 60)
    deferred = Outcome(Status.DEFERRED, "451 later", 451, due_at=2100.0, pending=("c@x.org",))
    recipients = [RecipientOutcome("b@x.org", "sent", 250, "250 ok"),
                  RecipientOutcome("c@x.org", "deferred", 451, "451 later")]
    assert store.finish(c.id, "me", attempt(2001.0, "temporary", 451), deferred, recipients)
    info = store.get("id1")
    assert (info.status, info.attempts, info.last_code, info.due_at) == (Status.DEFERRED, 1, 451, 2100.0)
    [again] = store.claim(2100.0, 10, "me", 60)
    assert again.rcpt_to == ("c@x.org",) and again.attempts == 1  # only the pending recipient
    assert store.finish(c.id, "me", attempt(2101.0), Outcome(Status.SENT, code=250),
                        [RecipientOutcome("c@x.org", "sent", 250, "250 ok")])
    assert [a.outcome for a in store.attempts("id1")] == ["temporary", "sent"]
    assert {r.address: r.status for r in store.recipients("id1")} == {"b@x.org": "sent", "c@x.org": "sent"}
    assert store.get("id1").finished_at == 2101.0


def test_finish_after_losing_the_lease_records_but_does_not_overrule(store):
    store.insert([rec(1)])
    store.claim(2000.0, 10, "slow", 10)
    store.release(None, now=2011.0)
    store.claim(2011.0, 10, "fast", 60)
    assert not store.finish("id1", "slow", attempt(2012.0), Outcome(Status.SENT))
    assert store.get("id1").status is Status.SENDING and len(store.attempts("id1")) == 1


def test_counts_follow_every_transition(store):
    store.insert([rec(i) for i in range(6)])
    for c in store.claim(2000.0, 3, "me", 60):
        store.finish(c.id, "me", attempt(2001.0), Outcome(Status.SENT))
    store.cancel("id4", 2002.0)
    expected = {s: 0 for s in Status} | {Status.SENT: 3, Status.QUEUED: 2, Status.CANCELLED: 1}
    assert store.counts() == expected
    assert sum(1 for _ in store.list_messages(limit=100)) == 6
    assert [m.id for m in store.list_messages(Status.CANCELLED)] == ["id4"]
    assert store.purge(before=2001.5) == 3
    assert store.counts() == expected | {Status.SENT: 0}
    with pytest.raises(NotFound):
        store.raw("id0")


def test_cancel_and_requeue_refuse_the_wrong_status(store):
    store.insert([rec(1), rec(2)])
    [c] = store.claim(2000.0, 1, "me", 60)
    store.finish(c.id, "me", attempt(2001.0, "permanent", 550), Outcome(Status.FAILED, "550 no", 550))
    with pytest.raises(InvalidState, match="cannot cancel message id1: it is failed"):
        store.cancel("id1", 2002.0)
    with pytest.raises(InvalidState, match="cannot retry message id2: it is queued"):
        store.requeue("id2", 2002.0)
    assert store.requeue("id1", 3000.0) == 1
    info = store.get("id1")
    assert (info.status, info.attempts, info.due_at) == (Status.QUEUED, 0, 3000.0)


def test_quarantine(store):
    assert store.quarantine_count() == 0
    store.quarantine("not valid JSON", b"{bad", 1.0)
    [q] = store.quarantined()
    assert (q.reason, q.data, store.quarantine_count()) == ("not valid JSON", b"{bad", 1)


def test_stats_from_the_hourly_roll_up(store):
    now = time.time()
    store.insert([rec(i, created=now - 10) for i in range(10)])
    claimed = store.claim(now, 10, "me", 60)
    for n, c in enumerate(claimed):
        if n < 8:
            store.finish(c.id, "me", Attempt(c.send_after + (n + 1) * 0.1, "r", 250, "250", 0.01, "sent"),
                         Outcome(Status.SENT, code=250))
        else:
            store.finish(c.id, "me", attempt(now, "permanent", 550), Outcome(Status.FAILED, "550 gone", 550))
    store.record_depth(now)
    s = store.stats(now - 3600, now)
    assert (s["sent"], s["failed"], s["expired"]) == (8, 2, 0)
    assert s["top_failures"] == [{"reason": "550 gone", "count": 2}]
    # Latencies 0.1 .. 0.8 s: the histogram's buckets are within 10%.
    assert s["latency"]["p50"] == pytest.approx(0.4, rel=0.12)
    assert s["latency"]["p99"] == pytest.approx(0.8, rel=0.12)
    assert s["depth_hourly"][-1]["depth"] == 0
    assert store.stats(now + 7200, now + 7200)["sent"] == 0
