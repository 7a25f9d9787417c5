"""Suppression: recipients a relay refused as unknown are not offered again for a while.

The store's part runs on every engine (`database_config`: SQLite and PostgreSQL);
the daemon's against a real aiosmtpd relay that refuses one recipient 550 5.1.1,
asserting on what the relay received."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mailmand import Email
from mailmand.cli import main
from mailmand.config import load
from mailmand.message import Record
from mailmand.policy import suppressible
from mailmand.stores import Status, open_store
from mailmand.stores.model import EventType, RecipientOutcome, Refusal
from tests.conftest import postgres_block, write_store_config

DAY = 86400.0


@pytest.fixture
def store(database_config):
    s = open_store(database_config, create=True)
    yield s
    s.close()


def rec(i: int, *rcpt: str) -> Record:
    raw = f"Subject: s{i}\r\n\r\nbody {i}\r\n".encode()
    return Record(f"id{i}", "a@x.org", rcpt, raw, 0, 0.0, None, time.time())


def refusal(address: str, at: float, reply: str = "550 5.1.1 no such user") -> Refusal:
    return Refusal(address, int(reply[:3]), reply, at)


# -- what counts: a pure decision ------------------------------------------------------


@pytest.mark.parametrize(("code", "reply", "status", "counts"), [
    (550, "550 5.1.1 <bob@x.org>: no such user", "failed", True),
    (550, "550-5.1.1 The email account that you tried to reach does not exist", "failed", True),
    (550, "550 5.1.10 RESOLVER.ADR.RecipientNotFound", "failed", True),
    (551, "551 5.1.6 mailbox has moved", "failed", True),
    (550, "550 User unknown", "failed", True),  # no enhanced status: the words say it
    (553, "553 sorry, no such mailbox here", "failed", True),
    (550, "550 5.7.1 relaying denied", "failed", False),  # policy, not the address
    (554, "554 5.7.1 spam detected", "failed", False),
    (550, "550 5.1.8 bad sender's system address", "failed", False),  # the sender's address
    (550, "550 rejected", "failed", False),  # says nothing about the address
    (450, "450 4.1.1 mailbox busy, no such user for now", "deferred", False),  # temporary
    (550, "550 4.1.1 no such user", "failed", False),  # a 4.x.x detail: not for good
])
def test_what_counts_as_refused_as_unknown(code, reply, status, counts):
    assert suppressible(RecipientOutcome("bob@x.org", status, code, reply)) is counts


# -- the store, every engine --------------------------------------------------------------


def test_refusals_count_up_to_after_then_suppress_until_the_last_one_plus_duration(store):
    t = time.time()
    assert store.note_refusals([refusal("Bob@X.org", t - 100)], after=2, duration=DAY) == []
    assert store.suppressions(t) == []  # counted, not suppressed
    [counted] = store.suppressions(t, ["bob@x.org"])
    assert (counted.refusals, counted.until) == (1, None)
    assert store.note_refusals([refusal("bob@x.org", t - 50, "550 5.1.1 gone")], after=2, duration=DAY) == [
        "bob@x.org"]
    [s] = store.suppressions(t)
    assert (s.address, s.refusals, s.code, s.reply, s.source) == ("bob@x.org", 2, 550, "550 5.1.1 gone", "relay")
    assert s.until == pytest.approx(t - 50 + DAY) and s.first_at == pytest.approx(t - 100)
    assert store.suppressions(t + DAY) == []  # ended


def test_an_operator_adds_and_removes_a_suppression(store):
    t = time.time()
    store.suppress("Ann@X.org", t, t + 3600, "complained")
    [s] = store.suppressions(t)
    assert (s.address, s.source, s.reply, s.until) == ("ann@x.org", "operator", "complained", t + 3600)
    assert store.unsuppress("ANN@x.org") is True
    assert store.suppressions(t) == [] and store.suppressions(t, ["ann@x.org"]) == []
    assert store.unsuppress("ann@x.org") is False


def test_mail_to_a_suppressed_address_fails_at_ingest_for_it_and_goes_to_the_others(store):
    t = time.time()
    store.note_refusals([refusal("bob@x.org", t)], after=1, duration=DAY)
    assert store.insert([rec(1, "Bob@x.org", "carol@x.org"), rec(2, "dave@x.org")]) == 2
    info = store.get("id1")
    assert info.status is Status.QUEUED and info.rcpt_to == ("Bob@x.org", "carol@x.org")  # the envelope as given
    [bob] = store.recipients("id1")
    assert (bob.address, bob.status, bob.code) == ("Bob@x.org", "suppressed", 550)
    assert "suppressed until" in bob.reply and "550 5.1.1 no such user" in bob.reply
    claimed = {c.id: c for c in store.claim(t + 1, 10, "me", 60)}
    assert claimed["id1"].rcpt_to == ("carol@x.org",)  # never offered to a relay
    assert claimed["id2"].rcpt_to == ("dave@x.org",)
    events, _ = store.events(message_id="id1")
    assert [(e.type, [r.address for r in e.recipients]) for e in events] == [
        (EventType.QUEUED, ["carol@x.org"]), (EventType.SUPPRESSED, ["Bob@x.org"])]
    assert events[1].recipients[0].status == "suppressed"
    assert [e.type for e in store.events(message_id="id2")[0]] == [EventType.QUEUED]


def test_a_message_whose_every_recipient_is_suppressed_fails_at_once(store):
    t = time.time()
    store.suppress("bob@x.org", t, t + DAY, "complained")
    store.note_refusals([refusal("eve@x.org", t)], after=1, duration=DAY)
    before = store.stats(t - 3600, t + 3600)
    assert store.insert([rec(1, "bob@x.org", "eve@x.org")]) == 1
    info = store.get("id1")
    assert info.status is Status.FAILED and info.finished_at is not None
    assert info.last_error == "every recipient is suppressed"
    assert store.claim(t + 1, 10, "me", 60) == []
    assert store.counts()[Status.FAILED] == 1 and store.counts()[Status.QUEUED] == 0
    assert [e.type for e in store.events(message_id="id1")[0]] == [EventType.SUPPRESSED, EventType.FAILED]
    assert {r.status for r in store.recipients("id1")} == {"suppressed"}
    after = store.stats(t - 3600, t + 3600)
    assert after["messages"]["failed"] == before["messages"]["failed"] + 1  # among the failed of the hour
    assert after["attempts"] == before["attempts"]  # and no attempt was made


def test_a_suppression_that_ended_stops_nothing(store):
    t = time.time()
    store.suppress("bob@x.org", t - 2 * DAY, t - DAY, "old")
    store.insert([rec(1, "bob@x.org")])
    assert store.get("id1").status is Status.QUEUED and store.recipients("id1") == []


def test_purge_forgets_refusals_and_suppressions_older_than_retention(store):
    t = time.time()
    store.note_refusals([refusal("old@x.org", t - 40 * DAY)], after=2, duration=DAY)  # counted once, long ago
    store.note_refusals([refusal("new@x.org", t)], after=2, duration=DAY)
    store.purge(t - 30 * DAY)
    assert [s.address for s in store.suppressions(t, ["old@x.org", "new@x.org"])] == ["new@x.org"]


def test_ahead_counts_what_a_claim_takes_first(store):
    t = time.time() - 100
    store.insert([Record(f"m{i}", "a@x.org", ("b@x.org",), b"Subject: s\r\n\r\nx\r\n", p, 0.0, None, t + i)
                  for i, p in enumerate([0, 0, 5, 0, 0])])
    assert [store.ahead(f"m{i}", t + 50) for i in range(5)] == [1, 2, 0, 3, 4]
    store.insert([Record("later", "a@x.org", ("b@x.org",), b"Subject: s\r\n\r\nx\r\n", 9, t + 1000, None, t)])
    assert store.ahead("m4", t + 50) == 4  # not due yet: not in front


# -- the daemon, against a real relay --------------------------------------------------------


def test_a_recipient_refused_550_5_1_1_is_not_offered_again(tmp_path: Path, smtp_server, database_config,
                                                             capsys):
    relay = smtp_server(rcpt_replies={"bob@x.org": "550 5.1.1 <bob@x.org>: no such user"})
    database = (postgres_block(database_config.dsn) if database_config.engine == "postgres"
                else f"      engine: sqlite3\n      path: {database_config.path}\n")
    conf = write_store_config(tmp_path / "mailmand.yaml", tmp_path / "spool", relay.port, database)

    def send(*to: str) -> str:
        capsys.readouterr()
        assert main(["send", "-c", str(conf), "--from", "app@x.org", "--subject", "hi", "--text", "x",
                     *(f"--to={a}" for a in to)]) == 0
        return capsys.readouterr().out.strip()

    first = send("bob@x.org")
    assert main(["--once", "-c", str(conf)]) == 0
    assert relay.messages == []  # refused at RCPT: nothing was delivered
    second = send("carol@x.org", "bob@x.org")
    alone = send("BOB@x.org")
    assert main(["--once", "-c", str(conf)]) == 0
    assert [(m.rcpt_tos, b"Subject: hi" in m.data) for m in relay.messages] == [(("carol@x.org",), True)]
    store = open_store(load(conf).server.database)
    try:
        assert store.get(first).status is Status.FAILED
        assert store.get(second).status is Status.SENT
        assert {r.address: r.status for r in store.recipients(second)} == {"carol@x.org": "sent",
                                                                           "bob@x.org": "suppressed"}
        assert store.get(alone).status is Status.FAILED and store.attempts(alone) == []
        assert [e.type for e in store.events(message_id=second)[0]][:2] == [EventType.QUEUED, EventType.SUPPRESSED]
    finally:
        store.close()
    capsys.readouterr()
    assert main(["suppress", "list", "--json", "-c", str(conf)]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["address"], listed["refusals"], listed["source"]) == ("bob@x.org", 1, "relay")
    assert main(["suppress", "remove", "bob@x.org", "-c", str(conf)]) == 0
    third = send("bob@x.org")
    relay.rcpt_replies.clear()
    assert main(["--once", "-c", str(conf)]) == 0
    assert [m.rcpt_tos for m in relay.messages][-1] == ("bob@x.org",)
    store = open_store(load(conf).server.database)
    try:
        assert store.get(third).status is Status.SENT
    finally:
        store.close()


def test_a_policy_refusal_suppresses_nothing_and_after_waits_for_its_count(tmp_path: Path, smtp_server,
                                                                           write_config, capsys):
    relay = smtp_server(rcpt_replies={"bob@x.org": "550 5.7.1 relaying denied",
                                      "eve@x.org": "550 5.1.1 no such user"})
    conf = write_config(relay.port, extra_server="    suppression: {after: 2, duration: 1h}\n")
    for to in ("bob@x.org", "eve@x.org", "bob@x.org", "eve@x.org"):
        assert main(["send", "-c", str(conf), "--from", "app@x.org", "--to", to, "--text", "x"]) == 0
        assert main(["--once", "-c", str(conf)]) == 0
    capsys.readouterr()
    assert main(["suppress", "list", "--json", "-c", str(conf)]) == 0
    [eve] = json.loads(capsys.readouterr().out)
    assert eve["address"] == "eve@x.org" and eve["refusals"] == 2
    assert eve["until"] - eve["last_at"] == pytest.approx(3600)


def test_suppress_add_list_remove_from_the_command_line(tmp_path: Path, smtp_server, write_config, capsys):
    relay = smtp_server()
    conf = write_config(relay.port)
    assert main(["--once", "-c", str(conf)]) == 0  # the daemon makes the store
    capsys.readouterr()
    assert main(["suppress", "add", "Trap@X.org", "--for", "2h", "--reason", "a spam trap", "-c", str(conf)]) == 0
    assert "suppressed trap@x.org until" in capsys.readouterr().out
    assert main(["suppress", "list", "-c", str(conf)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ADDRESS", "UNTIL", "SINCE", "REFUSALS", "BY", "REPLY"]
    assert out[1].startswith("trap@x.org") and "operator" in out[1] and out[1].endswith("a spam trap")
    assert main(["suppress", "add", "not an address", "-c", str(conf)]) == 2
    assert "expected local@domain" in capsys.readouterr().err
    assert main(["suppress", "remove", "trap@x.org", "-c", str(conf)]) == 0
    assert main(["suppress", "remove", "trap@x.org", "-c", str(conf)]) == 1
    assert "was not suppressed" in capsys.readouterr().out
    assert main(["send", "-c", str(conf), "--from", "app@x.org", "--to", "trap@x.org", "--text", "x"]) == 0
    assert main(["--once", "-c", str(conf)]) == 0
    assert [m.rcpt_tos for m in relay.messages] == [("trap@x.org",)]


def test_a_suppressed_address_has_its_reason_in_show(tmp_path: Path, smtp_server, write_config, capsys):
    relay = smtp_server()
    conf = write_config(relay.port)
    assert main(["--once", "-c", str(conf)]) == 0
    assert main(["suppress", "add", "bob@x.org", "-c", str(conf)]) == 0
    email = Email(sender="app@x.org", to=["bob@x.org", "carol@x.org"], subject="s", text="x")
    from mailmand import Client

    client = Client(config=str(conf))
    mid = client.enqueue(email)
    assert main(["--once", "-c", str(conf)]) == 0
    capsys.readouterr()
    assert main(["show", mid, "--json", "-c", str(conf)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "sent"
    by = {r["address"]: r for r in shown["recipients"]}
    assert by["bob@x.org"]["status"] == "suppressed"
    assert by["bob@x.org"]["reply"].startswith("suppressed by the operator until ")
    assert [m.rcpt_tos for m in relay.messages] == [("carol@x.org",)]
