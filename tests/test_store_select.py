"""The store contract's operator side, on every engine: the one selection every
listing pages through, hold and release, qshape's view by domain, and the
quarantine's review."""

from __future__ import annotations

import pytest

from mailmand.errors import InvalidState, NotFound, RecordRejected
from mailmand.message import Record
from mailmand.stores import Status, open_store
from mailmand.stores.model import AGE_BOUNDS, SCHEDULED, Key, Outcome, RecipientOutcome, Selection
from tests.test_store import done


@pytest.fixture
def store(database_config):
    s = open_store(database_config, create=True)
    yield s
    s.close()


def mail(mid: str, sender: str = "app@x.org", to: tuple[str, ...] = ("b@x.org",), subject: str = "hello",
         created: float = 1000.0, send_after: float = 0.0) -> Record:
    raw = f"Subject: {subject}\r\n\r\nbody\r\n".encode()
    return Record(mid, sender, to, raw, 0, send_after, None, created, subject=subject)


def ids(page) -> list[str]:
    return [m.id for m in page.messages]


def test_a_selection_matches_every_criterion_given(store):
    store.insert([
        mail("m1", to=("Ann@Example.com",), subject="Your invoice 100%"),
        mail("m2", to=("bob@example.com", "eve@other.org"), sender="News@Shop.example", created=1001.0),
        mail("m3", to=("ann_x@example.com",), subject="Invoice_2", created=1002.0),
        mail("m4", to=("zed@example.community",), created=1003.0),
        mail("m5", to=('"odd\\"one"@x.org',), created=1004.0),
    ])

    def pick(**kw) -> list[str]:
        return ids(store.select(Selection(**kw), 100))

    assert pick() == ["m5", "m4", "m3", "m2", "m1"]  # newest first
    # A recipient whole, ASCII case ignored; `_` and `%` are letters here, not wildcards.
    assert pick(to=("ann@example.com",)) == ["m1"]
    assert pick(to=("ANN@EXAMPLE.COM", "eve@other.org")) == ["m2", "m1"]
    assert pick(to=("ann%@example.com",)) == [] and pick(to=("ann_x@example.com",)) == ["m3"]
    # `@domain`: every recipient at that domain, and not at one whose name begins with it.
    assert pick(to=("@example.com",)) == ["m3", "m2", "m1"]
    assert pick(to=("@EXAMPLE.COMMUNITY",)) == ["m4"]
    assert pick(to=('"odd\\"one"@x.org',)) == ["m5"]  # a quoted local part, as JSON keeps it
    assert pick(sender=("news@shop.example",)) == ["m2"] and pick(sender=("@shop.example",)) == ["m2"]
    assert pick(sender=("news@shop",)) == []
    assert pick(subject="INVOICE") == ["m3", "m1"] and pick(subject="0%") == ["m1"] and pick(subject="e_2") == ["m3"]
    assert pick(since=1001.0, until=1003.0) == ["m3", "m2"]
    assert pick(ids=("m1", "m4", "nope")) == ["m4", "m1"]
    assert pick(to=("@example.com",), subject="invoice", since=1001.0) == ["m3"]
    store.cancel("m2", 2000.0)
    assert pick(statuses=(Status.CANCELLED,)) == ["m2"]
    assert pick(statuses=(Status.QUEUED, Status.CANCELLED)) == ["m5", "m4", "m3", "m2", "m1"]
    assert pick(statuses=(Status.SENT,)) == []
    # `_` is a letter too, not any one character.
    store.insert([mail("m6", to=("annyx@example.com",), subject="Invoice 2", created=1005.0)])
    assert pick(to=("ann_x@example.com",)) == ["m3"] and pick(subject="e_2") == ["m3"]


def test_pages_go_on_from_the_last_key_and_never_repeat_or_skip(store):
    # Messages made in the same instant are ordered by id: a page may end between them.
    store.insert([mail(f"m{i:02d}", created=1000.0 + i // 3) for i in range(20)])
    store.cancel("m07", 2000.0)
    for statuses in ((), (Status.QUEUED,), (Status.QUEUED, Status.CANCELLED)):
        seen: list[str] = []
        after = None
        while True:
            page = store.select(Selection(statuses=statuses), 4, after)
            seen += ids(page)
            if page.next is None:
                break
            assert page.next == Key.of(page.messages[-1]) and len(page.messages) == 4
            after = page.next
        everything = [f"m{i:02d}" for i in range(19, -1, -1)]
        assert seen == (everything if Status.CANCELLED in statuses or not statuses
                        else [m for m in everything if m != "m07"])
    # The last page that is exactly full says there is no more.
    assert store.select(Selection(), 20).next is None and store.select(Selection(), 19).next is not None
    # A key goes on from where its message was, even once that message is gone.
    store.purge(before=3000.0)
    assert ids(store.select(Selection(), 3, Key(1002.0, "m07"))) == ["m06", "m05", "m04"]
    assert [m.id for m in store.list_messages(Status.CANCELLED)] == []


def test_held_mail_is_never_claimed_and_comes_back_as_it_was(store):
    store.insert([mail("new"), mail("tried", created=1001.0), mail("later", created=1002.0, send_after=9000.0),
                  mail("sent", created=1003.0)])
    for c in store.claim(2000.0, 10, "me", 60):
        if c.id == "tried":
            done(store, c, "me", 2001.0, Outcome(Status.DEFERRED, "451 busy", 451, due_at=2500.0), "temporary", 451)
        elif c.id == "sent":
            done(store, c, "me", 2001.0, Outcome(Status.SENT))
        else:
            store.release_own("me", [c.id])
    assert sorted(store.hold(["new", "tried", "later", "sent", "nope"], 3000.0)) == ["later", "new", "tried"]
    assert store.counts()[Status.HELD] == 3 and store.counts()[Status.QUEUED] == 0
    held = store.get("tried")
    assert (held.status, held.held_at, held.due_at) == (Status.HELD, 3000.0, 2500.0)
    assert store.claim(99_999.0, 10, "me", 60) == []  # held mail is never claimed, however due
    assert store.next_due() is None
    assert store.hold(["new"], 3100.0) == []  # held already: left as it is (its held_at too)
    assert store.get("new").held_at == 3000.0

    assert sorted(store.release(["new", "tried", "sent"], 3600.0)) == ["new", "tried"]
    new, tried = store.get("new"), store.get("tried")
    # Back as it was: never tried -> queued, tried -> deferred, due when it was due.
    assert (new.status, tried.status, tried.due_at, tried.held_at) == (Status.QUEUED, Status.DEFERRED, 2500.0, None)
    # Its max-time clock stood still while it was held: 600 s later than it would have been.
    assert tried.paused == 600.0
    claimed = {c.id: c for c in store.claim(3600.0, 10, "me", 60)}
    assert set(claimed) == {"new", "tried"} and claimed["tried"].clock == claimed["tried"].send_after + 600.0
    # Held twice, the pauses add up.
    store.release_own("me", ["new"])
    store.hold(["new"], 4000.0)
    store.release(["new"], 4100.0)
    assert store.get("new").paused == 700.0
    # Held mail can be cancelled; a cancelled message is never released.
    store.cancel("later", 5000.0)
    assert store.release(["later"], 5001.0) == [] and store.get("later").status is Status.CANCELLED
    assert store.counts()[Status.HELD] == 0


def test_retry_starts_a_fresh_max_time_clock(store):
    store.insert([mail("m")])
    store.hold(["m"], 1500.0)
    store.release(["m"], 1800.0)
    [c] = store.claim(2000.0, 1, "me", 60)
    done(store, c, "me", 2001.0, Outcome(Status.FAILED, "550 no", 550), "permanent", 550)
    store.requeue("m", 3000.0)
    [c] = store.claim(3000.0, 1, "me", 60)
    assert (c.send_after, c.paused, c.clock) == (3000.0, 0.0, 3000.0)


def test_a_cancelled_message_reads_cancelled_for_its_waiting_recipients(store):
    store.insert([mail("m", to=("a@x.org", "b@x.org"))])
    [c] = store.claim(2000.0, 1, "me", 60)
    done(store, c, "me", 2001.0, Outcome(Status.DEFERRED, "451", 451, due_at=2500.0, pending=("b@x.org",)),
         "temporary", 451, [RecipientOutcome("a@x.org", "sent", 250, "250 ok"),
                            RecipientOutcome("b@x.org", "deferred", 451, "451 busy")])
    store.cancel("m", 2100.0)
    assert {r.address: (r.status, r.reply) for r in store.recipients("m")} == {
        "a@x.org": ("sent", "250 ok"), "b@x.org": ("cancelled", "cancelled by operator")}


def test_by_domain_counts_recipients_still_to_deliver_by_age(store):
    now = 100_000.0
    store.insert([
        mail("fresh", to=("a@gmail.com", "b@GMAIL.com", "c@yahoo.com"), created=now - 60),
        mail("old", to=("d@gmail.com",), created=now - 3000),
        mail("ancient", to=("e@gmail.com",), created=now - 10 * 86400),
        mail("edge", to=("f@yahoo.com",), created=now - 300),  # 5 min exactly: the 5-10 bucket
        mail("future", to=("g@gmail.com",), created=now - 60, send_after=now + 3600),
        mail("weird", to=('"a@b"@odd.example',), created=now - 60),
        mail("partial", to=("h@gmail.com", "i@hotmail.com"), created=now - 700),
        mail("done", to=("j@gmail.com",), created=now - 60),
    ])
    for c in store.claim(now, 10, "me", 60):
        if c.id == "partial":
            done(store, c, "me", now, Outcome(Status.DEFERRED, "451", 451, due_at=now + 60,
                                               pending=("i@hotmail.com",)), "temporary", 451)
        elif c.id == "done":
            done(store, c, "me", now, Outcome(Status.SENT))
        else:
            store.release_own("me", [c.id])
    store.hold(["ancient"], now)
    shape = {s.domain: s.buckets for s in store.by_domain(now)}
    assert shape == {
        "gmail.com": {0: 2, 4: 1, len(AGE_BOUNDS): 1, SCHEDULED: 1},  # old: 50 min is the 40-80 bucket
        "yahoo.com": {0: 1, 1: 1},
        "odd.example": {0: 1},  # the domain is after the last @
        "hotmail.com": {2: 1},  # only the recipient still to deliver to
    }
    assert [s.domain for s in store.by_domain(now)][0] == "gmail.com"  # most recipients first
    assert {s.domain for s in store.by_domain(now, (Status.HELD,))} == {"gmail.com"}
    assert store.by_domain(now, (Status.SENT,))[0].total == 1


def test_quarantine_keeps_where_an_item_came_from_and_gives_it_back(store):
    first = store.quarantine("not valid JSON", b"{bad", 1.0, "spool /var/spool/mailmand row 7")
    second = store.quarantine("record.rcpt_to: no recipient", b'{"id": "x"}', 2.0)
    assert [q.id for q in store.quarantined()] == [second, first]
    entry = store.quarantined_entry(first)
    assert (entry.reason, entry.data, entry.source) == ("not valid JSON", b"{bad", "spool /var/spool/mailmand row 7")
    assert entry.to_json()["source"] == "spool /var/spool/mailmand row 7" and entry.to_json(data=True)["data"] == "{bad"
    # Released: the entry goes and the message comes in, in one transaction.
    assert store.unquarantine(first, [mail("fixed")]) == 1
    assert store.get("fixed").status is Status.QUEUED and store.quarantine_count() == 1
    with pytest.raises(NotFound, match=f"no quarantine entry {first}"):
        store.quarantined_entry(first)
    with pytest.raises(NotFound):
        store.unquarantine(first, [mail("again")])
    with pytest.raises(NotFound):
        store.get("again")  # nothing was inserted for an entry that is gone
    # The store refuses the record: the entry stays.
    too_big = Record("big", "a@x.org", ("b@x.org",), b"Subject: x\r\n\r\nx", 2**63, 0.0, None, 1000.0)
    with pytest.raises(RecordRejected):
        store.unquarantine(second, [too_big])
    assert store.quarantine_count() == 1
    assert store.unquarantine(second) == 0 and store.quarantine_count() == 0  # deleted, nothing stored


def test_operator_moves_refuse_other_statuses(store):
    store.insert([mail("m")])
    store.hold(["m"], 1500.0)
    with pytest.raises(InvalidState, match="cannot retry message m: it is held"):
        store.requeue("m", 1600.0)
    assert store.flush(["m"], 1600.0) == 0  # held mail is not deferred: flush leaves it held
    assert store.get("m").status is Status.HELD


@pytest.mark.parametrize(("window", "windows"), [(1, 1), (2, 3), (3, 2), (7, 1)])
def test_a_text_filter_past_its_window_scans_and_finds_the_same(store, monkeypatch, window, windows):
    """A filter on text reads WINDOW rows by index, then scans the rest: the rows, their
    order and the pages are the same whatever the window."""
    from mailmand.stores import operator

    store.insert([mail(f"m{i:02d}", to=(f"r{i}@{'a' if i % 3 else 'b'}.example",), subject=f"s{i % 4}",
                       created=1000.0 + i // 2) for i in range(30)])
    store.hold([f"m{i:02d}" for i in range(0, 30, 5)], 2000.0)
    selections = [Selection(to=("@b.example",)), Selection(subject="s1"), Selection(to=("@a.example",), subject="s2"),
                  Selection(statuses=(Status.QUEUED, Status.HELD), to=("@b.example",)),
                  Selection(statuses=(Status.HELD,), subject="s0"), Selection(to=("nobody@x.org",))]

    def pages(sel: Selection, size: int) -> list[list[str]]:
        out, after = [], None
        while True:
            page = store.select(sel, size, after)
            out.append(ids(page))
            if page.next is None:
                return out
            after = page.next

    expected = [(pages(sel, 4), pages(sel, 100)) for sel in selections]
    assert expected[0][1] == [[f"m{i:02d}" for i in range(29, -1, -1) if i % 3 == 0]]
    monkeypatch.setattr(operator, "WINDOW", window)
    monkeypatch.setattr(operator, "WINDOWS", windows)
    assert [(pages(sel, 4), pages(sel, 100)) for sel in selections] == expected
