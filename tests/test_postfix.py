"""mailmand.smtp against real Postfix peers (tests/postfix.py): the C smtp-sink
scripted to refuse or hang up on chosen commands, and a private Postfix smtpd
that enforces RFC 2920's pipelining rules (`smtpd_forbid_unauth_pipelining`)."""

from __future__ import annotations

import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from mailmand.config import ServerConfig, SmtpConfig
from mailmand.dispatcher import Dispatcher
from mailmand.smtp import Envelope, Kind, Relay, SendResult
from mailmand.stores.model import Status
from mailmand.stores.sqlite import SQLiteStore
from tests.postfix import HOST, Postfix, Sink
from tests.replygate import ReplyGate

MakeSink = Callable[..., Sink]


def envelope(tag: str, *rcpt: str, subject: str | None = None) -> Envelope:
    to = rcpt or ("to@example.com",)
    raw = (f"From: app@example.com\r\nTo: {', '.join(to)}\r\nSubject: {subject or tag}\r\n"
           f"Message-ID: <{tag}@mailmand.test>\r\n\r\nHello from {tag}.\r\n").encode()
    return Envelope(tag, "app@example.com", to, raw)


def relay(port: int, **changes: object) -> Relay:
    settings: dict[str, object] = {"connections": 1, "timeout": 10.0, "data_timeout": 10.0, "helo": "client.test"}
    return Relay(SmtpConfig(host=HOST, port=port, **{**settings, **changes}))  # type: ignore[arg-type]


def send(port: int, envelopes: Iterable[Envelope], **changes: object) -> dict[str, SendResult]:
    r = relay(port, **changes)
    try:
        return {res.id: res for group in r.send_grouped(list(envelopes)) for res in group}
    finally:
        r.close()


# -- smtp-sink: refusals and hang-ups on chosen commands


def test_sink_takes_pipelined_mail_once_each(smtp_sink: MakeSink) -> None:
    sink = smtp_sink()
    results = send(sink.port, [envelope(f"s{i}", "a@x.test", "b@x.test") for i in range(30)], connections=2)
    assert {(r.kind, r.code) for r in results.values()} == {(Kind.SENT, 250)}
    dumped = sink.messages()
    assert sorted(m.split(b"Message-ID: <")[1].split(b"@")[0] for m in dumped) == sorted(
        f"s{i}".encode() for i in range(30))


def test_sink_hangs_up_at_end_of_data(smtp_sink: MakeSink) -> None:
    sink = smtp_sink("-q", ".")
    results = send(sink.port, [envelope(f"h{i}") for i in range(3)])
    for r in results.values():
        assert (r.kind, r.code, r.reply) == (Kind.TEMPORARY, None, "end of data: connection closed by relay")
        assert r.lost_in_data and r.answered  # counts toward max-fails
    assert len(results) == 3


def test_sink_hangs_up_at_data(smtp_sink: MakeSink) -> None:
    sink = smtp_sink("-q", "DATA")
    [r] = send(sink.port, [envelope("d1", "a@x.test", "b@x.test")]).values()
    assert (r.kind, r.code, r.reply) == (Kind.TEMPORARY, None, "DATA: connection closed by relay")
    assert r.lost_in_data  # the envelope was accepted: the message is what the relay hangs up on
    assert all(x.kind is Kind.TEMPORARY and x.code is None for x in r.recipients)


def test_sink_hangs_up_at_mail(smtp_sink: MakeSink) -> None:
    sink = smtp_sink("-q", "MAIL")
    results = send(sink.port, [envelope(f"m{i}") for i in range(3)])
    for r in results.values():
        assert (r.kind, r.code, r.reply) == (Kind.TEMPORARY, None, "MAIL FROM: connection closed by relay")
        assert not r.lost_in_data and not r.answered  # the relay never took it in: does not count
    assert sink.messages() == []


def test_sink_421_at_rcpt(smtp_sink: MakeSink) -> None:
    sink = smtp_sink("-Q", "RCPT")
    results = send(sink.port, [envelope("c1", "a@x.test", "b@x.test"), envelope("c2")])
    c1 = results["c1"]
    assert (c1.kind, c1.code) == (Kind.TEMPORARY, 421) and c1.reply.startswith("421")
    a, b = c1.recipients
    assert a.code == 421 and b.code is None and b.reply.startswith("not tried")
    assert (results["c2"].kind, results["c2"].code) == (Kind.TEMPORARY, 421)
    assert sink.messages() == []


def test_sink_refuses_every_rcpt_hard(smtp_sink: MakeSink) -> None:
    sink = smtp_sink("-f", "RCPT")  # -f implies no PIPELINING: one command at a time
    results = send(sink.port, [envelope("r1", "a@x.test", "b@x.test"), envelope("r2")])
    for r in results.values():
        assert (r.kind, r.code) == (Kind.PERMANENT, 500)
        assert all(x.code == 500 for x in r.recipients)
    assert sink.messages() == []


def test_sink_defers_at_end_of_data(smtp_sink: MakeSink) -> None:
    sink = smtp_sink("-r", ".")
    results = send(sink.port, [envelope("e1"), envelope("e2")])
    assert {(r.kind, r.code) for r in results.values()} == {(Kind.TEMPORARY, 450)}
    assert not any(r.lost_in_data for r in results.values())


def test_sink_refuses_data(smtp_sink: MakeSink) -> None:
    sink = smtp_sink("-f", "DATA")
    results = send(sink.port, [envelope("x1"), envelope("x2")])
    assert {(r.kind, r.code) for r in results.values()} == {(Kind.PERMANENT, 500)}
    assert sink.messages() == []


def test_hang_up_at_data_fails_the_message_after_max_fails(smtp_sink: MakeSink, tmp_path: Path) -> None:
    """The whole path: store → dispatcher → relay that hangs up at the end of data."""
    sink = smtp_sink("-q", ".")
    store = SQLiteStore(tmp_path / "mailmand.db", create=True)
    cfg = ServerConfig(max_fails=3, smtp=SmtpConfig(host=HOST, port=sink.port, connections=1, timeout=10.0))
    from mailmand.message import Email  # the record as a producer makes it

    record = Email(sender="app@example.com", to="poison@example.com", subject="s", text="b").to_record(
        cfg.max_message_size)
    store.insert([record])
    dispatcher = Dispatcher(store, cfg)
    try:
        now = record.created_at
        for _ in range(3):
            dispatcher.run_once(now=now)
            info = store.get(record.id)
            if info.status is not Status.DEFERRED:
                break
            now = info.due_at
    finally:
        dispatcher.close()
    info = store.get(record.id)
    assert info.status is Status.FAILED
    assert info.last_error == "max-fails (3) reached: relay closed the connection during DATA, 3 times"
    store.close()


# -- Postfix smtpd


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def session_commands(log: str) -> Counter[str]:
    """Postfix's per-session command counts, summed over `log`: each command given,
    accepted or not ("rcpt=3/7" is 7)."""
    total: Counter[str] = Counter()
    for line in re.findall(r"disconnect from \S+ (.*)", log):
        for name, count in re.findall(r"(\w+)=(?:\d+/)?(\d+)", line):
            total[name] += int(count)
    return total


@pytest.mark.parametrize(("listener", "chunking", "carrier"), [
    ("pipelining", "auto", "bdat"),  # CHUNKING and PIPELINING offered: BDAT windows
    ("pipelining", "off", "data"),  # DATA, pipelined
    ("plain", "auto", "data"),  # no PIPELINING: DATA one command at a time (BDAT only rides a pipeline)
])
def test_postfix_takes_mail_under_strict_pipelining_rules(postfix: Postfix, listener: str, chunking: str,
                                                          carrier: str) -> None:
    port = postfix.port if listener == "pipelining" else postfix.plain_port
    tags = [f"{listener}-{chunking}-{i}" for i in range(20)]
    start = len(postfix.log())
    results = send(port, [envelope(t, "a@x.test", "b@x.test") for t in tags], connections=2, chunking=chunking)
    assert {r.kind for r in results.values()} == {Kind.SENT}
    assert all(re.match(r"250 2\.0\.0 Ok: (\d+ bytes )?queued as", r.reply) for r in results.values())
    assert wait_for(lambda: all(t in postfix.delivered() for t in (f"{x}@mailmand.test" for x in tags)))
    assert all(postfix.delivered().count(f"{t}@mailmand.test") == 1 for t in tags)  # once each
    assert wait_for(lambda: session_commands(postfix.log()[start:])["quit"] == 2)
    used = session_commands(postfix.log()[start:])
    assert (used[carrier], used["bdat" if carrier == "data" else "data"]) == (20, 0), used
    assert "synchronization" not in postfix.log()


def test_postfix_cuts_off_a_client_that_breaks_the_pipelining_rules(postfix: Postfix) -> None:
    """The control for the test above: the strict check is live. A body sent
    in the same write as DATA, before its 354, is cut off (the rule mailmand's
    pipelining must keep: the body goes only after the 354)."""
    for port in (postfix.port, postfix.plain_port):
        with socket.create_connection((HOST, port), timeout=10) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"EHLO client.test\r\n")
            while f.readline()[3:4] == b"-":
                pass
            s.sendall(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
            replies = [f.readline() for _ in range(3)]
            assert replies[2] == b"554 5.5.0 Error: SMTP protocol synchronization\r\n", replies
            assert f.readline() == b""  # and the connection is closed


def test_postfix_refusals_in_one_pipelined_session(postfix: Postfix) -> None:
    envs = [
        envelope("pf-gone", "gone@refuse.test"),  # every RCPT refused: DATA refused, then RSET
        envelope("pf-mixed", "ok@x.test", "later@refuse.test"),
        envelope("pf-none", "later@refuse.test", "gone@refuse.test"),
        envelope("pf-content", "ok@x.test", subject="reject-me please"),  # refused at the end of data
        envelope("pf-ok", "ok@x.test"),
    ]
    results = send(postfix.port, envs)
    assert (results["pf-gone"].kind, results["pf-gone"].code) == (Kind.PERMANENT, 550)
    mixed = results["pf-mixed"]
    assert mixed.kind is Kind.SENT and mixed.retry_recipients == ("later@refuse.test",)
    assert (results["pf-none"].kind, results["pf-none"].code) == (Kind.TEMPORARY, 450)
    content = results["pf-content"]
    assert (content.kind, content.code) == (Kind.PERMANENT, 550) and "content refused" in content.reply
    assert results["pf-ok"].kind is Kind.SENT
    assert wait_for(lambda: "pf-ok@mailmand.test" in postfix.delivered())
    delivered = postfix.delivered()
    assert [t for t in ("pf-gone", "pf-mixed", "pf-none", "pf-content", "pf-ok")
            if f"{t}@mailmand.test" in delivered] == ["pf-mixed", "pf-ok"]
    # One session carried all five: Postfix's summary of it counts every command.
    assert wait_for(lambda: "ehlo=1 mail=5 rcpt=3/7" in postfix.log()), postfix.log()[-2000:]
    assert "synchronization" not in postfix.log()


# -- BDAT windows against Postfix smtpd (CHUNKING + PIPELINING, strict pipelining rules)


def test_postfix_takes_a_whole_window_before_a_reply(postfix: Postfix) -> None:
    """The client writes 16 messages (the default window) before it reads any
    reply: the gate holds Postfix's replies until 16 BDATs went through and
    records how many had when the first reply was let go."""
    gate = ReplyGate(postfix.port, hold=16)
    tags = [f"window-{i}" for i in range(30)]
    start = len(postfix.log())
    try:
        results = send(gate.port, [envelope(t) for t in tags])
    finally:
        gate.close()
    assert gate.bdats_before_first_reply == 16
    assert {(r.kind, r.code) for r in results.values()} == {(Kind.SENT, 250)}
    assert wait_for(lambda: all(f"{t}@mailmand.test" in postfix.delivered() for t in tags))
    assert all(postfix.delivered().count(f"{t}@mailmand.test") == 1 for t in tags)
    assert wait_for(lambda: session_commands(postfix.log()[start:])["quit"] == 1)
    used = session_commands(postfix.log()[start:])
    # One session; every message after the first opens with RSET (RFC 3030 §2).
    assert (used["mail"], used["bdat"], used["rset"], used["data"]) == (30, 30, 29, 0), used
    assert "synchronization" not in postfix.log()


def test_postfix_refusals_across_bdat_windows(postfix: Postfix) -> None:
    """Refusals at RCPT and at the BDAT, twice over so they fall across a window's edge:
    each outcome lands on its message and recipient, and only the accepted are queued."""
    kinds = [("gone", ("gone@refuse.test",), None), ("mixed", ("ok@x.test", "later@refuse.test"), None),
             ("none", ("later@refuse.test", "gone@refuse.test"), None), ("ok", ("ok@x.test",), None),
             ("content", ("ok@x.test",), "reject-me")]
    envs = [envelope(f"bw{n}-{k}", *to, subject=subject and f"{subject} {n}")
            for n in range(2) for k, to, subject in kinds]
    start = len(postfix.log())
    results = send(postfix.port, envs)
    for n in range(2):
        def r(k: str, n: int = n) -> SendResult:
            return results[f"bw{n}-{k}"]
        assert (r("gone").kind, r("gone").code) == (Kind.PERMANENT, 550)
        assert r("mixed").kind is Kind.SENT and r("mixed").retry_recipients == ("later@refuse.test",)
        assert [(x.address, x.code) for x in r("mixed").recipients] == [("ok@x.test", 250), ("later@refuse.test", 450)]
        assert (r("none").kind, r("none").code) == (Kind.TEMPORARY, 450)
        assert [x.code for x in r("none").recipients] == [450, 550]
        assert (r("content").kind, r("content").code) == (Kind.PERMANENT, 550)
        assert "content refused" in r("content").reply
        assert r("ok").kind is Kind.SENT and "bytes queued as" in r("ok").reply
    assert wait_for(lambda: "bw1-ok@mailmand.test" in postfix.delivered())
    delivered = [e.id for e in envs if f"{e.id}@mailmand.test" in postfix.delivered()]
    assert delivered == ["bw0-mixed", "bw0-ok", "bw1-mixed", "bw1-ok"]
    assert wait_for(lambda: session_commands(postfix.log()[start:])["quit"] == 1)
    used = session_commands(postfix.log()[start:])
    # An RSET opens each message but the first, and one follows the last, refused at its BDAT.
    assert (used["mail"], used["bdat"], used["rset"], used["data"]) == (10, 10, 10, 0), used
    assert "synchronization" not in postfix.log()


def test_connection_lost_with_the_window_half_answered(postfix: Postfix, tmp_path: Path) -> None:
    """Store → dispatcher → a gate that hangs up after Postfix's replies to three
    messages and to the RSET, MAIL and RCPT of the fourth. Postfix took all eight
    (each went whole with its MAIL); the store has three sent and five deferred,
    one attempt each, and none was sent again at once on a new session. Only the
    fourth, whose envelope was accepted, counts toward max-fails."""
    from mailmand.message import Email

    cut = 3 + 4 + 4 + 3  # MAIL RCPT BDAT, then RSET MAIL RCPT BDAT twice, then RSET MAIL RCPT
    gate = ReplyGate(postfix.port, hold=8, cut=cut)
    store = SQLiteStore(tmp_path / "mailmand.db", create=True)
    cfg = ServerConfig(smtp=SmtpConfig(host=HOST, port=gate.port, connections=1, timeout=10.0, helo="client.test"))
    records = [Email(sender="app@example.com", to="to@example.com", subject=f"half {i}", text="b").to_record(
        cfg.max_message_size) for i in range(8)]
    store.insert(records)
    dispatcher = Dispatcher(store, cfg)
    try:
        dispatcher.run_once(now=max(r.created_at for r in records))
    finally:
        dispatcher.close()
        gate.close()
    status = {r.id: store.get(r.id).status for r in records}
    assert [status[r.id] for r in records] == [Status.SENT] * 3 + [Status.DEFERRED] * 5
    for r in records:
        [attempt] = store.attempts(r.id)  # recorded once
        assert (attempt.outcome == "sent") == (status[r.id] is Status.SENT)
    assert [a.reply for r in records[3:] for a in store.attempts(r.id)] == (
        ["BDAT: connection closed by relay"] + ["MAIL FROM: connection closed by relay"] * 4)
    assert [store.get(r.id).fails for r in records[3:]] == [1, 0, 0, 0, 0]
    ids = [re.search(rb"Message-ID: <([^>]+)>", r.raw)[1].decode()  # type: ignore[index]
           for r in records]
    assert wait_for(lambda: all(i in postfix.delivered() for i in ids))
    assert all(postfix.delivered().count(i) == 1 for i in ids)  # at least once, and not twice right away
    store.close()


def test_a_pooled_session_the_relay_closed_costs_one_message_not_a_window(postfix: Postfix) -> None:
    """The relay closes a pooled session while it idles (under the idle probe's
    5 s). The next run writes one message on it, not a window: that one is
    deferred (its body went out: it may have been taken), the rest go on a new
    session."""
    gate = ReplyGate(postfix.port, hold=1)
    r = relay(gate.port)
    try:
        [[first]] = list(r.send_grouped([envelope("pooled-0")]))
        assert first.kind is Kind.SENT
        gate.hang_up()
        assert wait_for(lambda: "disconnect from" in postfix.log().split("pooled-0")[-1])
        results = {res.id: res for group in r.send_grouped([envelope(f"pooled-{i}") for i in range(1, 17)])
                   for res in group}
    finally:
        r.close()
        gate.close()
    lost = [res for res in results.values() if res.kind is not Kind.SENT]
    assert [(x.id, x.kind, x.code, x.reply) for x in lost] == [
        ("pooled-1", Kind.TEMPORARY, None, "MAIL FROM: connection closed by relay")]
    assert len(results) == 16
