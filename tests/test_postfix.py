"""mailmand.smtp against real Postfix peers (tests/postfix.py): the C smtp-sink
scripted to refuse or hang up on chosen commands, and a private Postfix smtpd
that enforces RFC 2920's pipelining rules (`smtpd_forbid_unauth_pipelining`)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from mailmand.config import ServerConfig, SmtpConfig
from mailmand.dispatcher import Dispatcher
from mailmand.smtp import Envelope, Kind, Relay, SendResult
from mailmand.stores.base import Status
from mailmand.stores.sqlite import SQLiteStore
from tests.postfix import HOST, Postfix, Sink

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
    """Issue 12 item 5, whole path: store → dispatcher → relay that hangs up at the end of data."""
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


@pytest.mark.parametrize("listener", ["pipelining", "plain"])
def test_postfix_takes_mail_under_strict_pipelining_rules(postfix: Postfix, listener: str) -> None:
    port = postfix.port if listener == "pipelining" else postfix.plain_port
    tags = [f"{listener}-{i}" for i in range(20)]
    results = send(port, [envelope(t, "a@x.test", "b@x.test") for t in tags], connections=2)
    assert {r.kind for r in results.values()} == {Kind.SENT}
    assert all(r.reply.startswith("250 2.0.0 Ok: queued as") for r in results.values())
    assert wait_for(lambda: all(t in postfix.delivered() for t in (f"{x}@mailmand.test" for x in tags)))
    assert all(postfix.delivered().count(f"{t}@mailmand.test") == 1 for t in tags)  # once each
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
