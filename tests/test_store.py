"""The store contract: one suite, every engine (SQLite files under tmp_path, a
PostgreSQL database of its own per test), through the `database_config` fixture."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from mailmand.config import DatabaseConfig
from mailmand.errors import InvalidState, NotFound, RecordRejected, StoreError
from mailmand.message import Record
from mailmand.stores import Status, open_store
from mailmand.stores.model import (
    START,
    Attempt,
    Claimed,
    DaemonInfo,
    EventType,
    Finished,
    Outcome,
    RecipientOutcome,
    Selection,
)


@pytest.fixture
def store(database_config):
    s = open_store(database_config, create=True)
    yield s
    s.close()


def rec(i: int, priority: int = 0, send_after: float = 0.0, created: float = 1000.0) -> Record:
    raw = f"Subject: s{i}\r\n\r\nbody {i}\r\n".encode()
    return Record(f"id{i}", "a@x.org", ("b@x.org", "c@x.org"), raw, priority, send_after, None, created + i)


def attempt(at: float, outcome: str = "sent", code: int | None = 250) -> Attempt:
    return Attempt(at, "relay:25", code, f"{code} reply", 0.01, outcome)


def done(store, claimed, owner: str, at: float, outcome: Outcome, kind: str = "sent", code: int | None = 250,
         recipients=()) -> bool:
    [ok] = store.finish([Finished(claimed.id, owner, claimed.token, attempt(at, kind, code), outcome, recipients)])
    return ok


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


def test_a_record_the_store_cannot_hold_is_rejected_and_nothing_is_stored(store):
    too_big = Record("big", "a@x.org", ("b@x.org",), b"Subject: x\r\n\r\nx", 2**63, 0.0, None, 1000.0)
    with pytest.raises(RecordRejected):
        store.insert([rec(1), too_big])
    assert store.counts()[Status.QUEUED] == 0  # all or nothing: ingest then retries one at a time
    assert store.insert([rec(1)]) == 1


def test_claim_order_lease_and_due_time(store):
    store.insert([rec(1), rec(2, priority=5), rec(3), rec(4, send_after=5000.0)])
    got = store.claim(now=2000.0, limit=2, owner="me", lease=60)
    assert [c.id for c in got] == ["id2", "id1"]  # priority first, then the longest due
    assert got[0].raw == rec(2).raw and got[0].rcpt_to == ("b@x.org", "c@x.org")
    assert [c.id for c in store.claim(now=2000.0, limit=10, owner="other", lease=60)] == ["id3"]
    assert store.claim(now=2000.0, limit=10, owner="other", lease=60) == []  # id4 is not due
    assert store.counts()[Status.SENDING] == 3
    assert store.next_due() == 5000.0
    assert store.sweep_expired(now=2030.0) == 0  # leases still running
    assert store.sweep_expired(now=2061.0, spare=["id3"]) == 2  # ran out: back, but for the one spared
    assert store.counts()[Status.QUEUED] == 3 and store.get("id3").status is Status.SENDING


def test_release_own_renew_and_take_over(store):
    store.insert([rec(i) for i in range(4)])
    mine = store.claim(2000.0, 2, "me", 60)
    theirs = store.claim(2000.0, 2, "dead", 60)
    assert store.release_own("me", [theirs[0].id]) == 0  # never someone else's
    assert store.renew("me", [mine[0].id], 5000.0) == 1
    assert store.sweep_expired(now=2100.0) == 3  # all but the renewed one
    assert store.get(mine[0].id).status is Status.SENDING
    assert store.release_own("me", [mine[0].id]) == 1
    again = store.claim(3000.0, 4, "dead", 60)
    assert store.take_over("dead") == 4 and store.counts()[Status.QUEUED] == 4
    if store.single_instance:
        store.claim(3000.0, 1, "anyone", 60)
        assert store.take_over(None) == 1
    else:  # a shared store never hands out every lease at once
        with pytest.raises(InvalidState, match="shared"):
            store.take_over(None)
    assert len(again) == 4


def test_finish_records_attempt_recipients_and_status(store):
    store.insert([rec(1)])
    [c] = store.claim(2000.0, 10, "me", 60)
    deferred = Outcome(Status.DEFERRED, "451 later", 451, due_at=2100.0, pending=("c@x.org",))
    recipients = [RecipientOutcome("b@x.org", "sent", 250, "250 ok"),
                  RecipientOutcome("c@x.org", "deferred", 451, "451 later")]
    assert done(store, c, "me", 2001.0, deferred, "temporary", 451, recipients)
    info = store.get("id1")
    assert (info.status, info.attempts, info.fails, info.last_code, info.due_at) == (
        Status.DEFERRED, 1, 1, 451, 2100.0)
    [again] = store.claim(2100.0, 10, "me", 60)
    assert again.rcpt_to == ("c@x.org",) and again.attempts == 1 and again.fails == 1
    assert again.token != c.token
    assert done(store, again, "me", 2101.0, Outcome(Status.SENT, code=250),
                recipients=[RecipientOutcome("c@x.org", "sent", 250, "250 ok")])
    assert [(a.outcome, a.daemon) for a in store.attempts("id1")] == [("temporary", "me"), ("sent", "me")]
    assert {r.address: r.status for r in store.recipients("id1")} == {"b@x.org": "sent", "c@x.org": "sent"}
    assert store.get("id1").finished_at == 2101.0


def test_an_unanswered_attempt_counts_as_an_attempt_not_a_fail(store):
    store.insert([rec(1)])
    [c] = store.claim(2000.0, 10, "me", 60)
    done(store, c, "me", 2001.0, Outcome(Status.DEFERRED, "connection refused", None, due_at=2100.0, counted=False),
         "temporary", None)
    info = store.get("id1")
    # One count everywhere: `list` says what `show` lists.
    assert (info.attempts, info.fails, len(store.attempts("id1"))) == (1, 0, 1)


def test_fenced_finish_a_stale_owner_does_not_overrule_a_newer_claim(store):
    store.insert([rec(1)])
    [slow] = store.claim(2000.0, 10, "slow", 10)
    store.sweep_expired(now=2011.0)
    [fast] = store.claim(2011.0, 10, "fast", 60)
    assert not done(store, slow, "slow", 2012.0, Outcome(Status.FAILED, "550 no", 550), "permanent", 550,
                    [RecipientOutcome("b@x.org", "failed", 550, "550 no")])
    info = store.get("id1")
    assert info.status is Status.SENDING and info.last_code is None  # the newer claim's to decide
    assert store.recipients("id1") == []
    assert done(store, fast, "fast", 2013.0, Outcome(Status.SENT, code=250))
    assert store.get("id1").status is Status.SENT
    assert [a.daemon for a in store.attempts("id1")] == ["slow", "fast"]  # both went on the wire


def test_an_outcome_kept_past_its_lease_applies_when_nobody_claimed_since(store):
    store.insert([rec(1)])
    [c] = store.claim(2000.0, 10, "me", 10)
    assert store.sweep_expired(now=2020.0) == 1  # our commit failed for a while; the sweep took it back
    assert done(store, c, "me", 2021.0, Outcome(Status.SENT, code=250))  # not re-claimed: still ours
    assert store.get("id1").status is Status.SENT
    assert store.claim(2022.0, 10, "other", 60) == []  # and so it is not sent twice


def test_an_outcome_committed_twice_is_recorded_once(store):
    """A COMMIT whose answer was lost (the connection dropped as it committed) is
    tried again with the same outcomes: one attempt on record, counted once."""
    store.insert([rec(1), rec(2)])
    c1, c2 = store.claim(2000.0, 10, "me", 60)
    outcome = Outcome(Status.DEFERRED, "451 busy", 451, due_at=2100.0)
    assert done(store, c1, "me", 2001.0, outcome, "temporary", 451)
    rows = [Finished(c.id, "me", c.token, attempt(2001.0, "temporary", 451), outcome) for c in (c1, c2)]
    assert store.finish(rows) == [True, True]  # id1 again (committed before), id2 for the first time
    for mid in ("id1", "id2"):
        info = store.get(mid)
        assert (info.status, info.attempts, len(store.attempts(mid))) == (Status.DEFERRED, 1, 1)
    assert store.stats(0.0, 10_000.0)["attempts"]["temporary"] == 2  # the hourly roll-up counted it once too
    # A later claim's attempt is a new one.
    c = store.claim(2100.0, 10, "me", 60)[0]
    assert done(store, c, "me", 2101.0, Outcome(Status.SENT, code=250))
    assert store.get(c.id).attempts == 2 and len(store.attempts(c.id)) == 2


def test_a_failed_message_leaves_no_recipient_deferred(store):
    store.insert([rec(1)])
    [c] = store.claim(2000.0, 10, "me", 60)
    done(store, c, "me", 2001.0, Outcome(Status.DEFERRED, "451 busy", 451, due_at=2002.0, pending=("c@x.org",)),
         "temporary", 451, [RecipientOutcome("b@x.org", "sent", 250, "250 ok"),
                            RecipientOutcome("c@x.org", "deferred", 451, "451 busy")])
    [c] = store.claim(2002.0, 10, "me", 60)
    done(store, c, "me", 2003.0, Outcome(Status.FAILED, "max-fails (2) reached: 451 busy", 451),
         "temporary", 451, [RecipientOutcome("c@x.org", "deferred", 451, "451 busy")])
    assert store.get("id1").status is Status.FAILED
    assert {r.address: r.status for r in store.recipients("id1")} == {"b@x.org": "sent", "c@x.org": "failed"}


def test_counts_follow_every_transition(store):
    store.insert([rec(i) for i in range(6)])
    for c in store.claim(2000.0, 3, "me", 60):
        done(store, c, "me", 2001.0, Outcome(Status.SENT))
    store.cancel("id4", 2002.0)
    expected = {s: 0 for s in Status} | {Status.SENT: 3, Status.QUEUED: 2, Status.CANCELLED: 1}
    assert store.counts() == expected
    store.housekeeping(2003.0)  # folding counters changes no count
    assert store.counts() == expected
    assert [m.id for m in store.list_messages(limit=100)] == [f"id{i}" for i in range(5, -1, -1)]  # newest first
    assert [m.id for m in store.list_messages(Status.CANCELLED)] == ["id4"]
    assert store.purge(before=2001.5) == 3
    assert store.counts() == expected | {Status.SENT: 0}
    with pytest.raises(NotFound):
        store.raw("id0")


def test_cancel_and_requeue_refuse_the_wrong_status(store):
    store.insert([rec(1), rec(2).replace(tags={"order": "42"})])
    [c] = store.claim(2000.0, 1, "me", 60)
    done(store, c, "me", 2001.0, Outcome(Status.FAILED, "550 no", 550), "permanent", 550,
         [RecipientOutcome("b@x.org", "failed", 550, "550 no"), RecipientOutcome("c@x.org", "sent", 250, "ok")])
    with pytest.raises(InvalidState, match="cannot cancel message id1: it is failed"):
        store.cancel("id1", 2002.0)
    with pytest.raises(InvalidState, match="cannot retry message id2: it is queued"):
        store.requeue("id2", 2002.0)
    assert store.requeue("id1", 3000.0) == 1
    info = store.get("id1")
    # A fresh max-fails budget; the attempt on record stays on record.
    assert (info.status, info.fails, info.attempts, info.due_at) == (Status.QUEUED, 0, 1, 3000.0)
    again = {c.id: c for c in store.claim(3000.0, 10, "me", 60)}["id1"]
    assert again.rcpt_to == ("b@x.org",)  # only the recipient not yet delivered to
    assert {r.address: r.status for r in store.recipients("id1")} == {"b@x.org": "deferred", "c@x.org": "sent"}


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
            store.finish([Finished(c.id, "me", c.token, Attempt(c.send_after + (n + 1) * 0.1, "r", 250, "250",
                                                                 0.01, "sent"), Outcome(Status.SENT, code=250))])
        else:
            done(store, c, "me", now, Outcome(Status.FAILED, "550 gone", 550), "permanent", 550)
    store.record_depth(now)
    s = store.stats(now - 3600, now)
    assert (s["sent"], s["failed"], s["expired"]) == (8, 2, 0)
    assert s["top_failures"] == [{"reason": "550 gone", "count": 2}]
    # Latencies 0.1 .. 0.8 s: the histogram's buckets are within 10%.
    assert s["latency"]["p50"] == pytest.approx(0.4, rel=0.12)
    assert s["latency"]["p99"] == pytest.approx(0.8, rel=0.12)
    assert s["depth_hourly"][-1]["depth"] == 0
    assert s["messages"] == {"sent": 8, "failed": 2, "expired": 0}
    assert s["attempts"] == {"sent": 8, "temporary": 0, "permanent": 2, "expired": 0}
    store.housekeeping(now)
    assert store.stats(now - 3600, now) == s  # folded, the same figures
    assert store.stats(now + 7200, now + 7200)["sent"] == 0


def test_flush_makes_deferred_mail_due_and_leaves_scheduled_mail(store):
    store.insert([rec(1), rec(2), rec(3, send_after=9000.0)])  # id3 is scheduled
    for c in store.claim(2000.0, 10, "me", 60):
        done(store, c, "me", 2001.0, Outcome(Status.DEFERRED, "451 later", 451, due_at=5000.0), "temporary", 451)
    assert store.flush(["id2", "id3", "nope"], 2500.0) == 1  # only the deferred one of those
    assert (store.get("id2").due_at, store.get("id1").due_at, store.get("id3").due_at) == (2500.0, 5000.0, 9000.0)
    assert store.flush(None, 2600.0) == 2  # every deferred message
    assert [c.id for c in store.claim(2600.0, 10, "me", 60)] in (["id1", "id2"], ["id2", "id1"])
    assert store.get("id3").status is Status.QUEUED and store.flush([], 2700.0) == 0


def test_daemons_live_and_gone(store):
    a = DaemonInfo("h1:10:aa", "h1", 10, "0.1.0", 1000.0, 1000.0, "/spool/a")
    b = DaemonInfo("h2:20:bb", "h2", 20, "0.1.0", 1001.0, 1001.0, "/spool/b")
    store.register(a)
    store.register(b)
    store.heartbeat(b.id, 1100.0)
    assert [d.id for d in store.daemons(now=1105.0)] == ["h2:20:bb"]  # a's heartbeat is 105 s old
    assert [d.id for d in store.daemons()] == ["h1:10:aa", "h2:20:bb"]
    assert store.daemons(now=1105.0)[0] == DaemonInfo("h2:20:bb", "h2", 20, "0.1.0", 1001.0, 1100.0, "/spool/b")
    store.unregister(a.id)
    assert [d.id for d in store.daemons()] == ["h2:20:bb"]


def test_export_and_import_keep_everything_and_copy_nothing_twice(store, database_config, tmp_path):
    from mailmand.config import DatabaseConfig

    store.insert([rec(1), rec(2).replace(tags={"order": "42"})])
    [c] = store.claim(2000.0, 1, "me", 60)
    done(store, c, "me", 2001.0, Outcome(Status.FAILED, "550 no", 550), "permanent", 550,
         [RecipientOutcome("b@x.org", "failed", 550, "550 no")])
    target = open_store(DatabaseConfig(path=tmp_path / "copy" / "copy.db"), create=True)
    try:
        for chunk in store.export(batch=1):
            target.import_messages(chunk)
        assert [target.import_messages(chunk) for chunk in store.export()] == [[]]
        for mid in ("id1", "id2"):
            assert target.get(mid) == store.get(mid)
            assert target.attempts(mid) == store.attempts(mid)
            assert target.recipients(mid) == store.recipients(mid)
            assert target.raw(mid) == store.raw(mid)
            assert target.events(message_id=mid)[0] == store.events(message_id=mid)[0]  # ids kept
        assert target.counts() == store.counts()
        assert [m.id for m in target.select(Selection(tags=(("order", "42"),)), 50).messages] == ["id2"]
    finally:
        target.close()


def test_read_only_opening_never_creates_a_store(database_config):
    with pytest.raises(StoreError, match=r"no store yet at .* \(the daemon creates it\)"):
        open_store(database_config)
    if database_config.engine != "postgres":
        assert not database_config.path.parent.exists()


def test_each_store_has_an_id_of_its_own(store, database_config, tmp_path):
    """The id `migrate` keys a copied store's statistics by: made with each store."""
    if database_config.engine == "postgres":
        from tests.conftest import _postgres_admin, postgres_database_dsn

        name = f"mailmand_test_{uuid.uuid4().hex[:12]}"
        with _postgres_admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        other_config = DatabaseConfig(engine="postgres", dsn=postgres_database_dsn(name))
    else:
        name = ""
        other_config = DatabaseConfig(path=tmp_path / "other" / "mailmand.db")
    other = open_store(other_config, create=True)
    try:
        assert len({store.store_id(), other.store_id()}) == 2
        assert len(store.store_id()) == 32
    finally:
        other.close()
        if name:
            with _postgres_admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_claim_leaves_later_commits_durable(store):
    """A claim commits without waiting for the disk (losing it to a power cut only
    makes the mail due again); the store's next commit waits again."""
    store.insert([rec(1)])
    assert store.claim(2000.0, 10, "d1", 60)
    with store.tx() as db:
        if store.name.startswith("postgres"):
            assert db.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        else:
            assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# -- races: every engine, real threads on real stores ------------------------------------------


@pytest.fixture
def peers(database_config):
    """More handles on the test's store, as other daemons would open it (their own connections)."""
    opened = []

    def peer():
        s = open_store(database_config, create=True)
        opened.append(s)
        return s

    yield peer
    for s in opened:
        s.close()


def test_claims_made_at_once_never_share_a_message(store, peers):
    store.insert([rec(i, created=1000.0 + i % 7) for i in range(300)])
    daemons = [peers() for _ in range(6)]
    start = threading.Barrier(len(daemons))
    taken: list[list[Claimed]] = [[] for _ in daemons]

    def claimer(k: int) -> None:
        start.wait()
        while batch := daemons[k].claim(2000.0, 7, f"d{k}", 60):
            taken[k] += batch

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(len(daemons))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [c.id for got in taken for c in got]
    assert len(ids) == len(set(ids)) == 300  # each message claimed once, by one daemon
    assert {c.token for got in taken for c in got} == {1}
    assert store.counts()[Status.SENDING] == 300


def test_a_finish_racing_a_sweep_and_another_daemons_claim_is_dropped(store, peers):
    """A daemon whose leases ran out records its outcomes while another daemon
    sweeps those leases and claims the messages: each outcome either lands
    before the other's claim (the message is sent, and not claimed again) or is
    dropped (the message is the other daemon's, still sending)."""
    store.insert([rec(i) for i in range(120)])
    late = store.claim(2000.0, 120, "late", 10)  # their leases end at 2010
    thief = peers()
    stolen: list[str] = []
    first = threading.Event()
    answers: dict[str, bool] = {}

    def sweep_and_claim() -> None:
        while True:
            thief.sweep_expired(2020.0)
            got = thief.claim(2020.0, 5, "thief", 60)
            stolen.extend(c.id for c in got)
            first.set()
            if not got and len(answers) == len(late):
                return

    def finish_late() -> None:
        first.wait(30)  # the thief's first claim is in: those five are its for sure
        for c in late:
            [answers[c.id]] = store.finish([Finished(c.id, "late", c.token, attempt(2021.0),
                                                     Outcome(Status.SENT, code=250))])

    threads = [threading.Thread(target=sweep_and_claim), threading.Thread(target=finish_late)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "the race did not end"
    assert stolen[:5] == [c.id for c in late[:5]]  # claimed in the same order: the first five raced and lost
    for c in late:
        info = store.get(c.id)
        if c.id in stolen:
            assert answers[c.id] is False, c.id
            assert (info.status, info.last_code) == (Status.SENDING, None), c.id  # the thief's to decide
        else:
            assert answers[c.id] is True and info.status is Status.SENT, c.id
        assert info.attempts == 1  # the late attempt is history either way
    assert len(stolen) == len(set(stolen))


def test_a_late_outcome_never_reopens_a_message_the_operator_cancelled(store):
    store.insert([rec(1)])
    [c] = store.claim(2000.0, 10, "late", 10)
    assert store.sweep_expired(2020.0) == 1
    store.cancel("id1", 2021.0)
    assert not done(store, c, "late", 2022.0, Outcome(Status.SENT, code=250))
    assert store.get("id1").status is Status.CANCELLED


# -- events, tags and webhooks ------------------------------------------------------------------


def tagged(i: int, tags: dict[str, str], **kw) -> Record:
    return rec(i, **kw).replace(tags=tags)


def kinds(store, message_id: str) -> list[str]:
    return [e.type.value for e in store.events(message_id=message_id)[0]]


def test_each_state_change_writes_its_event_with_the_change(store):
    store.insert([tagged(1, {"order": "42"}), rec(2), rec(3)])
    [q] = store.events(message_id="id1")[0]
    assert (q.type, q.message, q.tags, q.attempt, q.at) == (EventType.QUEUED, "id1", {"order": "42"}, 0, 1001.0)
    assert [(r.address, r.status) for r in q.recipients] == [("b@x.org", "queued"), ("c@x.org", "queued")]
    got = {c.id: c for c in store.claim(2000.0, 2, "me", 60)}
    store.cancel("id3", 2000.5)
    assert kinds(store, "id1") == ["queued"]  # a claim is no event: its lease handed back leaves the state as it was
    deferred = Outcome(Status.DEFERRED, "451 later", 451, due_at=2100.0, pending=("c@x.org",))
    done(store, got["id1"], "me", 2001.0, deferred, "temporary", 451,
         [RecipientOutcome("b@x.org", "sent", 250, "250 ok"),
          RecipientOutcome("c@x.org", "deferred", 451, "451 later")])
    [c] = store.claim(2100.0, 10, "me", 60)
    done(store, c, "me", 2101.0, Outcome(Status.SENT, code=250),
         recipients=[RecipientOutcome("c@x.org", "sent", 250, "ok")])
    # No per-recipient replies (the connection failed): each recipient of the attempt gets the outcome.
    [failed] = store.finish([Finished("id2", "me", got["id2"].token, attempt(2002.0, "permanent", 554),
                                      Outcome(Status.FAILED, "554 go away", 554), (), ("b@x.org", "c@x.org"))])
    store.requeue("id2", 2004.0)
    assert kinds(store, "id1") == ["queued", "deferred", "sent"]
    *_, d, s = store.events(message_id="id1")[0]
    assert (d.code, d.reply, d.relay, d.attempt, d.at) == (451, "451 reply", "relay:25", 1, 2001.0)
    assert [(r.address, r.status, r.code) for r in d.recipients] == [("b@x.org", "sent", 250),
                                                                    ("c@x.org", "deferred", 451)]
    assert (s.type, s.attempt, s.tags, [r.address for r in s.recipients]) == (EventType.SENT, 2, {"order": "42"},
                                                                              ["c@x.org"])
    assert kinds(store, "id2") == ["queued", "failed", "queued"]
    _, f, again = store.events(message_id="id2")[0]
    assert [(r.address, r.status, r.code, r.reply) for r in f.recipients] == [
        ("b@x.org", "failed", 554, "554 go away"), ("c@x.org", "failed", 554, "554 go away")]
    assert (again.attempt, again.reply, [r.status for r in again.recipients]) == (
        1, "retry requested by operator", ["queued", "queued"])
    [_, x] = store.events(message_id="id3")[0]
    assert (x.type, x.reply, [r.status for r in x.recipients]) == (EventType.CANCELLED, "cancelled by operator",
                                                                   ["cancelled", "cancelled"])
    everything = store.events(limit=1000)[0]
    assert len({e.id for e in everything}) == len(everything) == 8 and failed
    assert [e.id for e in store.events(limit=1000)[0]] == [e.id for e in everything]  # ids stay as recorded


def test_a_change_that_does_not_happen_writes_no_event(store):
    store.insert([rec(1), rec(2)])
    with pytest.raises(RecordRejected):  # all or nothing: neither message nor event
        store.insert([rec(3), Record("big", "a@x.org", ("b@x.org",), b"x", 2**63, 0.0, None, 1000.0)])
    assert store.events(message_id="id3")[0] == []
    [c1, c2] = store.claim(2000.0, 10, "late", 10)
    store.sweep_expired(2020.0)
    [newer] = store.claim(2020.0, 1, "newer", 60)
    stale = c1 if newer.id == c1.id else c2
    assert not done(store, stale, "late", 2021.0, Outcome(Status.SENT, code=250))  # fenced out
    assert kinds(store, stale.id) == ["queued"]
    other = c2 if stale is c1 else c1
    for _ in range(2):  # committed twice (a lost COMMIT answer): recorded once, one event
        done(store, other, "late", 2022.0, Outcome(Status.SENT, code=250))
    assert kinds(store, other.id) == ["queued", "sent"]
    with pytest.raises(InvalidState):
        store.cancel(other.id, 2023.0)
    assert kinds(store, other.id) == ["queued", "sent"]


def test_events_are_selected_and_followed_by_position(store):
    store.insert([tagged(1, {"order": "42", "tenant": "acme"}), tagged(2, {"order": "43", "tenant": "acme"}), rec(3)])
    store.cancel("id2", 5000.0)
    last, end = store.events(limit=2)
    assert [(e.message, e.type.value) for e in last] == [("id3", "queued"), ("id2", "cancelled")]
    assert [e.message for e in store.events(tags={"tenant": "acme"})[0]] == ["id1", "id2", "id2"]
    assert [e.message for e in store.events(tags={"tenant": "acme", "order": "43"})[0]] == ["id2", "id2"]
    assert [e.type.value for e in store.events(types=[EventType.CANCELLED])[0]] == ["cancelled"]
    assert [e.message for e in store.events(since=1002.0)[0]] == ["id2", "id3", "id2"]
    # Following: from a position, `limit` at a time, then from where that ended.
    first, at = store.events(after=START, limit=2)
    rest, at2 = store.events(after=at, limit=2)
    assert [e.id for e in first + rest] == [e.id for e in store.events()[0]]
    assert store.events(after=at2)[0] == [] and store.events(after=end)[0] == []
    store.cancel("id3", 5001.0)
    [new], _ = store.events(after=end)
    assert (new.message, new.type) == ("id3", EventType.CANCELLED)


def test_a_reader_never_passes_an_event_committed_late(store, peers):
    """A transaction that began first and commits last: a reader that read between
    the two commits and goes on from where it stopped still gets both, once each."""
    if store.single_instance:
        pytest.skip("one connection: writers take turns and a reader waits for the writer")
    store.insert([rec(1), rec(2)])
    _, start = store.events()
    slow, began, go = peers(), threading.Event(), threading.Event()

    def late() -> None:
        with slow.tx() as db:
            slow.record_event(db, "id1", EventType.HELD, 2000.0, reply="late")
            began.set()
            go.wait(30)

    t = threading.Thread(target=late)
    t.start()
    assert began.wait(30)
    peers().cancel("id2", 2001.0)  # begun after, committed before
    seen, upto = store.events(after=start)
    go.set()
    t.join(30)
    more, _ = store.events(after=upto)
    assert sorted(e.type.value for e in seen + more) == ["cancelled", "held"]


def test_messages_are_selected_by_tag(store):
    store.insert([tagged(1, {"order": "42", "tenant": "acme"}), tagged(2, {"order": "43", "tenant": "acme"}), rec(3)])
    def ids(*pairs: tuple[str, str], statuses: tuple[Status, ...] = ()) -> list[str]:
        return [m.id for m in store.select(Selection(statuses=statuses, tags=pairs), 50).messages]

    assert ids(("tenant", "acme")) == ["id2", "id1"]
    assert ids(("tenant", "acme"), ("order", "42")) == ["id1"]
    assert ids(("tenant", "acme"), statuses=(Status.SENT,)) == []
    assert ids(("tenant", "acme"), statuses=(Status.QUEUED, Status.SENT)) == ["id2", "id1"]
    assert store.get("id1").tags == {"order": "42", "tenant": "acme"} and store.get("id3").tags == {}
    assert store.get("id1").to_json()["tags"] == {"order": "42", "tenant": "acme"}


def test_purge_takes_a_message_with_its_events_and_tags(store):
    store.insert([tagged(1, {"order": "42"}), tagged(2, {"order": "42"})])
    store.cancel("id1", 2000.0)
    assert store.purge(3000.0) == 1
    assert store.events(message_id="id1")[0] == [] and kinds(store, "id2") == ["queued"]
    assert [m.id for m in store.select(Selection(tags=(("order", "42"),)), 50).messages] == ["id2"]


def test_a_webhook_is_sent_its_events_by_one_lease_holder_at_a_time(store, peers):
    store.insert([rec(1)])
    store.webhook_register("https://app.example/hook")
    assert store.webhook_pending("https://app.example/hook") == 0  # a new webhook starts at the end of the log
    store.insert([rec(2), rec(3)])
    store.cancel("id2", 2000.0)
    assert store.webhook_pending("https://app.example/hook") == 3
    assert store.webhook_pending("https://app.example/hook", [EventType.CANCELLED]) == 1
    other = peers()
    mine = store.webhook_claim("https://app.example/hook", "d1", 2000.0, 60)
    assert mine is not None and mine.fails == 0
    assert other.webhook_claim("https://app.example/hook", "d2", 2010.0, 60) is None  # d1 holds it
    batch, upto = store.events(after=mine.after, limit=2)
    assert [(e.message, e.type.value) for e in batch] == [("id2", "queued"), ("id3", "queued")]
    assert store.webhook_failed("https://app.example/hook", "d1", mine.token, 2030.0)
    again = store.webhook_claim("https://app.example/hook", "d1", 2031.0, 60)  # a renewal keeps its token
    assert again == type(mine)(mine.token, mine.after, 1, 2030.0)
    assert store.events(after=again.after, limit=2)[0] == batch  # the same events, the same ids
    assert store.webhook_done("https://app.example/hook", "d1", mine.token, upto)
    assert store.webhook_pending("https://app.example/hook") == 1
    # d1 stops answering: once its lease ran out d2 takes it, and d1's late mark is refused.
    taken = other.webhook_claim("https://app.example/hook", "d2", 2100.0, 60)
    assert taken is not None and taken.token != mine.token and (taken.after, taken.fails) == (upto, 0)
    rest, end = other.events(after=taken.after, limit=100)
    assert [e.type.value for e in rest] == ["cancelled"]
    assert not store.webhook_done("https://app.example/hook", "d1", mine.token, end)
    assert not store.webhook_failed("https://app.example/hook", "d1", mine.token, 9999.0)
    assert other.webhook_done("https://app.example/hook", "d2", taken.token, end)
    assert store.webhook_pending("https://app.example/hook") == 0
    other.webhook_release("https://app.example/hook", "d2")
    assert store.webhook_claim("https://app.example/hook", "d1", 2101.0, 60) is not None  # at once, not after the lease
    store.webhook_register("https://app.example/hook")  # again (a restart): its place is kept
    assert store.webhook_pending("https://app.example/hook") == 0


def test_a_dead_daemons_webhook_lease_is_taken_over_at_once(store):
    store.webhook_register("https://a.example/h")
    store.webhook_register("https://b.example/h")
    assert store.webhook_claim("https://a.example/h", "dead", 1000.0, 60) is not None
    assert store.webhook_claim("https://b.example/h", "alive", 1000.0, 60) is not None
    store.take_over("dead")  # known dead (its spool's lock is ours now): no wait for its lease
    assert store.webhook_claim("https://a.example/h", "me", 1001.0, 60) is not None
    assert store.webhook_claim("https://b.example/h", "me", 1001.0, 60) is None  # another's stays its own
    if store.single_instance:
        store.take_over(None)
        assert store.webhook_claim("https://b.example/h", "me", 1002.0, 60) is not None


def test_following_the_log_reads_only_past_its_place(store):
    """A webhook reads past its place each second: an index range, not every event again."""
    if not store.single_instance:
        pytest.skip("PostgreSQL plans the row comparison as one range of ix_events_log (EXPLAIN by hand)")
    from mailmand.stores.events import EVENT_COLUMNS

    where, args = store._log_range((0, 5), (0, 100))
    plan = " ".join(str(r) for r in store._read(
        f"EXPLAIN QUERY PLAN SELECT {EVENT_COLUMNS} FROM events e LEFT JOIN messages m ON m.id = e.message_id"
        f" WHERE {where} ORDER BY {store.LOG_ORDER.format('')} LIMIT 100", args))
    assert "SEARCH e USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan, plan


def test_the_json_a_webhook_sends_is_the_event_as_read(store):
    """events_json (made by the database, for webhooks) says what events().to_json says."""
    import json

    store.insert([tagged(1, {"order": "42", "note": 'a "quoted" é'}), rec(2)])
    [c] = store.claim(2000.0, 1, "me", 60)
    done(store, c, "me", 2001.123456, Outcome(Status.DEFERRED, "451 later", 451, due_at=2100.0), "temporary", 451,
         [RecipientOutcome("b@x.org", "deferred", 451, "451 4.7.1 try\\later")])
    texts, upto = store.events_json(START, limit=100)
    events, same = store.events(after=START, limit=100)
    assert len(texts) == len(events) == 3
    # Each read's position to go on from is past every event it gave. (Not equal to each
    # other: on PostgreSQL the horizon moves with any transaction on the server.)
    assert store.events_json(upto)[0] == [] and store.events(after=same)[0] == []
    assert [json.loads(t) for _, t in texts] == [e.to_json() for e in events]
    assert [at for at, _ in texts] == [e.at for e in events]
    [(_, only)] = store.events_json(START, [EventType.DEFERRED])[0]
    assert json.loads(only)["recipients"][0]["reply"] == "451 4.7.1 try\\later"


def test_hold_and_release_write_their_events_in_their_transaction(store):
    store.insert([tagged(1, {"order": "42"}), rec(2), rec(3)])
    [c] = store.claim(2000.0, 1, "me", 60)
    done(store, c, "me", 2001.0, Outcome(Status.SENT, code=250))
    assert sorted(store.hold(["id1", "id2", "id3"], 2100.0)) == ["id2", "id3"]  # id1 was sent: no move, no event
    assert kinds(store, "id1") == ["queued", "sent"]
    [_, held] = store.events(message_id="id2")[0]
    assert (held.type, held.reply, held.attempt, held.at) == (EventType.HELD, "held by operator", 0, 2100.0)
    assert [(r.address, r.status) for r in held.recipients] == [("b@x.org", "held"), ("c@x.org", "held")]
    assert store.release(["id2"], 2200.0) == ["id2"]
    store.cancel("id3", 2300.0)  # cancelling held mail is the third move: its event follows the hold's
    assert kinds(store, "id2") == ["queued", "held", "released"]
    assert kinds(store, "id3") == ["queued", "held", "cancelled"]
    last = store.events(message_id="id2")[0][-1]
    assert last.reply == "released by operator" and store.get("id2").status is Status.QUEUED


def test_the_heartbeat_carries_the_relay_state_that_status_shows(store):
    d = DaemonInfo("h1:10:aa", "h1", 10, "0.1.0", 1000.0, 1000.0, "/spool/a")
    store.register(d)
    assert store.daemons(now=1001.0)[0].relays == ()
    state = [{"name": "primary", "up": False, "since": 1000.5, "reply": "connection failed: refused"},
             {"name": "backup", "up": True, "since": 990.0, "reply": "250 2.0.0 OK"}]
    store.heartbeat(d.id, 1002.0, relays=state)
    [got] = store.daemons(now=1003.0)
    assert got.heartbeat_at == 1002.0 and [dict(r) for r in got.relays] == state
    store.heartbeat(d.id, 1004.0)  # a heartbeat without relay state keeps the last one
    assert [dict(r) for r in store.daemons(now=1005.0)[0].relays] == state
    assert got.to_json()["relays"][0]["name"] == "primary"


def test_a_relay_quota_grants_up_to_its_limit_per_day_and_takes_back_what_was_unused(store):
    assert store.quota_used("ses", 20000) == 0
    assert store.quota_reserve("ses", 20000, 4, limit=10) == 4
    assert store.quota_reserve("ses", 20000, 4, limit=10) == 4
    assert store.quota_reserve("ses", 20000, 4, limit=10) == 2  # only what is left
    assert store.quota_reserve("ses", 20000, 4, limit=10) == 0
    assert store.quota_used("ses", 20000) == 10
    store.quota_release("ses", 20000, 3)
    assert store.quota_used("ses", 20000) == 7
    store.quota_release("ses", 20000, 100)
    assert store.quota_used("ses", 20000) == 0  # never below zero
    assert store.quota_reserve("ses", 20001, 5, limit=10) == 5  # a new day, a new count
    assert store.quota_reserve("other", 20000, 5, limit=3) == 3  # each relay its own


def test_concurrent_quota_reservations_never_grant_more_than_the_limit(store, peers):
    granted: list[int] = []
    lock = threading.Lock()

    def take(s) -> None:
        for _ in range(20):
            n = s.quota_reserve("ses", 20000, 3, limit=100)
            with lock:
                granted.append(n)

    threads = [threading.Thread(target=take, args=(peers(),)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 100 and store.quota_used("ses", 20000) == 100
