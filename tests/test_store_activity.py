"""What the dashboard's overview reads from the store, on every engine: mail per
minute, per hour from the roll-ups, and each relay's last reply."""

from __future__ import annotations

import pytest

from mailmand.message import Record
from mailmand.stores import Status, open_store
from mailmand.stores.model import Attempt, Finished, Outcome

T0 = 1_800_000_000.0  # on the hour (divisible by 3600)


@pytest.fixture
def store(database_config):
    s = open_store(database_config, create=True)
    yield s
    s.close()


def rec(i: int, created: float) -> Record:
    return Record(f"m{i}", "a@x.org", ("b@x.org",), b"Subject: s\r\n\r\nbody\r\n", 0, 0.0, None, created)


def finish(store, at: float, status: Status, relay: str = "relay:25", code: int = 250, reply: str = "250 ok") -> str:
    [claimed] = store.claim(at, 1, "d1", 300.0)
    kind = {Status.SENT: "sent", Status.FAILED: "permanent", Status.DEFERRED: "temporary"}[status]
    attempt = Attempt(at, relay, code, reply, 0.01, kind)
    outcome = Outcome(status, None if status is Status.SENT else reply, code, at + 600 if status is Status.DEFERRED
                      else None)
    assert store.finish([Finished(claimed.id, "d1", claimed.token, attempt, outcome)]) == [True]
    return str(claimed.id)


def test_mail_per_step_counts_created_and_finished_mail_in_its_step(store):
    # Created at 0 s, 59.9 s, 60 s and 3 min into the window; one before it, one after.
    created = [T0 - 1, T0, T0 + 59.9, T0 + 60, T0 + 180, T0 + 300]
    store.insert([rec(i, c) for i, c in enumerate(created)])
    finish(store, T0 + 61, Status.SENT)  # the oldest due first: m0, made before the window
    finish(store, T0 + 119.5, Status.FAILED, code=550, reply="550 no")
    finish(store, T0 + 120, Status.SENT)
    got = store.activity(T0, T0 + 240, 60)
    assert got["created"] == [2, 1, 0, 1]  # T0 - 1 and T0 + 300 are outside
    assert got["sent"] == [0, 1, 1, 0]
    assert got["failed"] == [0, 1, 0, 0]
    assert got["expired"] == got["cancelled"] == [0, 0, 0, 0]
    assert store.activity(T0, T0, 60)["created"] == []


def test_finished_per_hour_comes_from_the_rollups_and_retry_takes_one_back(store):
    store.insert([rec(i, T0) for i in range(4)])
    finish(store, T0 + 10, Status.SENT)
    finish(store, T0 + 3600 * 2 + 5, Status.SENT)
    failed = finish(store, T0 + 3600 * 2 + 6, Status.FAILED, code=550, reply="550 no")
    got = store.finished_hourly(T0, T0 + 3 * 3600)
    assert got == {"sent": [1, 0, 1], "failed": [0, 0, 1], "expired": [0, 0, 0]}
    store.requeue(failed, T0 + 3 * 3600)
    assert store.finished_hourly(T0, T0 + 3 * 3600)["failed"] == [0, 0, 0]
    assert store.finished_hourly(T0 + 3600, T0 + 2 * 3600)["sent"] == [0]


def test_each_relays_last_reply_is_its_newest_in_the_window(store):
    store.insert([rec(i, T0 + i) for i in range(4)])
    finish(store, T0 + 10, Status.SENT, relay="a:25", reply="250 first")
    finish(store, T0 + 11, Status.DEFERRED, relay="b:25", code=451, reply="451 busy")
    finish(store, T0 + 12, Status.SENT, relay="a:25", reply="250 second")
    got = {e.relay: (e.type.value, e.code, e.reply) for e in store.last_replies()}
    assert got == {"a:25": ("sent", 250, "250 second"), "b:25": ("deferred", 451, "451 busy")}
    assert [e.relay for e in store.last_replies()] == ["a:25", "b:25"]  # newest first
    # A relay whose reply is older than the window is not listed: only the last event is looked at.
    assert [e.relay for e in store.last_replies(window=1)] == ["a:25"]
