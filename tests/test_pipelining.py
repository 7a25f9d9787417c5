"""The SMTP client's decisions (mailmand.smtp.protocol), pure: replies in, bytes out, no server.

Each test scripts what a relay answers and checks what the client writes and
decides: what is marked sent, what is retried, and that no body goes out
twice or without an accepted envelope. The real-server tests of the same
rules are in test_smtp.py (aiosmtpd) and test_postfix.py (Postfix).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmand.smtp.protocol import (
    Client,
    Done,
    Envelope,
    Event,
    Extensions,
    Kind,
    ProtocolError,
    Reply,
    ReplyParser,
    Unanswered,
    encode_body,
)

PIPE = Extensions(pipelining=True, eightbitmime=True, smtputf8=False)
PLAIN = Extensions(pipelining=False, eightbitmime=True, smtputf8=False)


def env(n: int, *rcpt: str) -> Envelope:
    raw = f"Subject: {n}\r\n\r\nbody {n}\r\n".encode()
    return Envelope(f"m{n}", "from@x.test", rcpt or ("a@x.test",), raw)


def r(line: str) -> Reply:
    return Reply(int(line[:3]), line)


class Wire:
    """A client and everything it wrote, write by write."""

    def __init__(self, ext: Extensions = PIPE, pipelining: bool = True) -> None:
        self.client = Client(ext, pipelining)
        self.writes: list[bytes] = []
        self.events: list[Event] = []

    def add(self, e: Envelope) -> None:
        assert self.client.add(e) is None

    def flush(self) -> bytes:
        out = self.client.outgoing()
        if out:
            self.writes.append(out)
        return out

    def answer(self, *lines: str) -> list[Event]:
        got: list[Event] = []
        for line in lines:
            got += self.client.receive(r(line))
        self.events += got
        return got

    @property
    def wire(self) -> bytes:
        return b"".join(self.writes)

    def done(self) -> dict[str, Done]:
        return {e.env.id: e for e in self.events if isinstance(e, Done)}


def commands(write: bytes) -> list[bytes]:
    return [line for line in write.split(b"\r\n") if line]


# -- replies and bytes


def test_reply_parser_joins_multiline_replies() -> None:
    p = ReplyParser()
    assert p.feed(b"250-mx.test greets you\r\n") is None
    assert p.feed(b"250-PIPELINING\r\n") is None
    assert p.feed(b"250 8BITMIME\r\n") == Reply(250, "250 mx.test greets you PIPELINING 8BITMIME")
    assert p.feed(b"554 5.7.1   no\r\n") == Reply(554, "554 5.7.1 no")
    with pytest.raises(ProtocolError):
        p.feed(b"hello there\r\n")
    with pytest.raises(ProtocolError):
        ReplyParser().feed(b"\r\n")


def test_reply_parser_refuses_a_code_change_inside_a_reply() -> None:
    p = ReplyParser()
    p.feed(b"250-one\r\n")
    with pytest.raises(ProtocolError):
        p.feed(b"550 two\r\n")


def test_body_is_dot_stuffed_with_crlf_line_ends() -> None:
    assert encode_body(b".one\r\ntwo\n.three\rfour") == b"..one\r\ntwo\r\n..three\r\nfour\r\n.\r\n"
    assert encode_body(b"ends\r\n") == b"ends\r\n.\r\n"
    assert encode_body(b"..\r\n.\r\n") == b"...\r\n..\r\n.\r\n"  # a lone dot line never ends the data


@given(st.binary(max_size=200) | st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a"])).map(b"".join))
def test_body_encoding_matches_the_rfc_rules_for_any_bytes(raw: bytes) -> None:
    """The fast path (CRLF already, dots by replace) agrees with the plain rules."""
    lines = re.split(rb"\r\n|\n|\r(?!\n)", raw)
    if len(lines) > 1 and lines[-1] == b"":  # a final line end ends the last line (an empty body stays one line)
        lines.pop()
    expected = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"
    assert encode_body(raw) == expected


def test_non_ascii_address_without_smtputf8_fails_at_once_writing_nothing() -> None:
    client = Client(PIPE)
    outcome = client.add(Envelope("m1", "from@x.test", ("usér@x.test",), b"x\r\n"))
    assert outcome is not None and outcome.kind is Kind.PERMANENT and "SMTPUTF8" in outcome.reply
    assert client.outgoing() == b"" and not client.waiting and client.ready_for_next


@pytest.mark.parametrize("address", ["a@x.test>\r\nRCPT TO:<evil@x.test", "a\n@x.test", "a@x.test\r"])
def test_an_address_that_would_split_the_command_is_refused_writing_nothing(address: str) -> None:
    for e in (Envelope("m1", address, ("b@x.test",), b"x\r\n"), Envelope("m1", "a@x.test", (address,), b"x\r\n")):
        client = Client(PIPE)
        outcome = client.add(e)
        assert outcome is not None and outcome.kind is Kind.PERMANENT and "line break" in outcome.reply
        assert client.outgoing() == b""


def test_smtputf8_and_8bitmime_go_on_mail_from() -> None:
    client = Client(Extensions(pipelining=True, eightbitmime=True, smtputf8=True))
    client.add(Envelope("m1", "from@x.test", ("usér@x.test",), "é\r\n".encode()))
    assert commands(client.outgoing())[0] == b"MAIL FROM:<from@x.test> BODY=8BITMIME SMTPUTF8"


# -- pipelined


def test_envelope_in_one_write_and_the_next_message_rides_with_the_body() -> None:
    w = Wire()
    w.add(env(1, "a@x.test", "b@x.test"))
    first = w.flush()
    assert commands(first) == [b"MAIL FROM:<from@x.test>", b"RCPT TO:<a@x.test>", b"RCPT TO:<b@x.test>", b"DATA"]
    assert not w.client.ready_for_next  # its envelope is not decided yet
    assert w.answer("250 ok", "250 ok", "250 ok") == []
    assert not w.client.ready_for_next
    w.answer("354 go ahead")
    assert w.client.ready_for_next  # body queued: the next message may join it
    w.add(env(2))
    second = w.flush()
    assert second == encode_body(env(1).raw) + (
        b"MAIL FROM:<from@x.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n")
    assert len(w.writes) == 2  # one write a message: ~1 round trip each
    assert not w.client.ready_for_next  # at most one envelope in flight
    [done] = w.answer("250 2.0.0 queued as A")
    assert isinstance(done, Done) and done.env.id == "m1" and done.outcome.kind is Kind.SENT
    assert [x.code for x in done.outcome.recipients] == [250, 250]
    w.answer("250 ok", "250 ok", "354 go")
    w.flush()
    [done2] = w.answer("250 queued as B")
    assert isinstance(done2, Done) and done2.outcome.kind is Kind.SENT
    assert not w.client.waiting and w.client.ready_for_next
    assert w.wire.count(b"body 1") == 1 and w.wire.count(b"body 2") == 1


def test_some_recipients_refused() -> None:
    w = Wire()
    w.add(env(1, "ok@x.test", "later@x.test", "gone@x.test"))
    w.flush()
    w.answer("250 ok", "250 ok", "451 4.3.0 later", "550 5.1.1 gone", "354 go")
    w.flush()
    [done] = w.answer("250 queued")
    o = done.outcome  # type: ignore[union-attr]
    assert (o.kind, o.code) == (Kind.SENT, 250)
    assert [(x.address, x.kind, x.code) for x in o.recipients] == [
        ("ok@x.test", Kind.SENT, 250), ("later@x.test", Kind.TEMPORARY, 451), ("gone@x.test", Kind.PERMANENT, 550)]


def test_every_recipient_refused_and_data_refused_resets_without_a_body() -> None:
    w = Wire()
    w.add(env(1, "later@x.test", "gone@x.test"))
    w.flush()
    [done] = w.answer("250 ok", "550 5.1.1 gone", "451 4.3.0 later", "554 5.5.1 no valid recipients")
    o = done.outcome  # type: ignore[union-attr]
    # A temporary refusal outranks a permanent one: the message has somewhere to go later.
    assert (o.kind, o.code, o.reply) == (Kind.TEMPORARY, 451, "451 4.3.0 later")
    assert [x.kind for x in o.recipients] == [Kind.PERMANENT, Kind.TEMPORARY]
    assert w.client.ready_for_next  # RSET may ride with the next message
    w.add(env(2))
    assert commands(w.flush()) == [b"RSET", b"MAIL FROM:<from@x.test>", b"RCPT TO:<a@x.test>", b"DATA"]
    assert w.answer("250 reset") == []
    assert b"body 1" not in w.wire


def test_every_recipient_refused_but_data_accepted_sends_a_lone_dot() -> None:
    # RFC 2920 §3.1: "if the DATA command was accepted the client SMTP should send a single dot".
    w = Wire()
    w.add(env(1, "gone@x.test"))
    w.flush()
    [done] = w.answer("250 ok", "550 5.1.1 gone", "354 go ahead")
    o = done.outcome  # type: ignore[union-attr]
    assert (o.kind, o.code) == (Kind.PERMANENT, 550)
    assert w.flush() == b".\r\n"
    assert w.answer("554 5.5.1 no valid recipients") == []  # its reply decides nothing
    assert not w.client.waiting and not w.client.closed
    assert b"body 1" not in w.wire


def test_mail_refused_ends_the_transaction_whatever_the_rest_say() -> None:
    w = Wire()
    w.add(env(1, "a@x.test", "b@x.test"))
    w.flush()
    [done] = w.answer("553 5.7.1 sender refused", "503 need MAIL", "503 need MAIL", "503 need RCPT")
    o = done.outcome  # type: ignore[union-attr]
    assert (o.kind, o.code) == (Kind.PERMANENT, 553)
    assert all((x.kind, x.code) == (Kind.PERMANENT, 553) for x in o.recipients)
    assert w.flush() == b"RSET\r\n"
    # Even a relay that answers 354 after refusing MAIL gets no body.
    w2 = Wire()
    w2.add(env(1))
    w2.flush()
    w2.answer("553 no", "250 ok", "354 go")
    assert w2.flush() == b".\r\n" and b"body 1" not in w2.wire


def test_530_at_mail_is_a_session_problem_not_the_message() -> None:
    w = Wire()
    w.add(env(1))
    w.flush()
    [done] = w.answer("530 5.7.0 Authentication required", "503 no", "503 no")
    assert (done.outcome.kind, done.outcome.code) == (Kind.TEMPORARY, 530)  # type: ignore[union-attr]


def test_data_refused_after_accepted_recipients() -> None:
    w = Wire()
    w.add(env(1, "a@x.test", "b@x.test"))
    w.flush()
    [done] = w.answer("250 ok", "250 ok", "250 ok", "550 5.7.1 no")
    o = done.outcome  # type: ignore[union-attr]
    assert (o.kind, o.code) == (Kind.PERMANENT, 550)
    assert all(x.code == 550 for x in o.recipients)
    # A DATA "accepted" with something other than 354 is not a delivery.
    w2 = Wire()
    w2.add(env(1))
    w2.flush()
    [done2] = w2.answer("250 ok", "250 ok", "250 odd")
    assert done2.outcome.kind is Kind.TEMPORARY  # type: ignore[union-attr]
    assert b"body" not in w2.wire


def test_421_mid_group_settles_the_message_and_reads_no_further() -> None:
    w = Wire()
    w.add(env(1, "a@x.test", "b@x.test", "c@x.test"))
    w.flush()
    [done] = w.answer("250 ok", "250 ok", "421 4.3.2 shutting down")
    o = done.outcome  # type: ignore[union-attr]
    assert (o.kind, o.code) == (Kind.TEMPORARY, 421)
    a, b, c = o.recipients
    assert (a.kind, a.code) == (Kind.TEMPORARY, 421)  # accepted, but the body never went
    assert (b.kind, b.code) == (Kind.TEMPORARY, 421)
    assert c.kind is Kind.TEMPORARY and c.code is None and c.reply.startswith("not tried")
    assert w.client.closed and not w.client.waiting and not w.client.ready_for_next
    assert w.flush() == b""  # no RSET, no QUIT: the relay is gone


def test_421_to_the_next_mail_leaves_that_message_untouched() -> None:
    w = Wire()
    w.add(env(1))
    w.flush()
    w.answer("250 ok", "250 ok", "354 go")
    w.add(env(2))
    w.flush()
    events = w.answer("250 queued", "421 4.3.2 bye")
    assert isinstance(events[0], Done) and events[0].outcome.kind is Kind.SENT
    assert events[1] == Unanswered(env(2), "MAIL FROM: 421 4.3.2 bye", 421)
    assert w.client.closed


def test_421_at_the_end_of_data() -> None:
    w = Wire()
    w.add(env(1))
    w.flush()
    w.answer("250 ok", "250 ok", "354 go")
    w.add(env(2))
    w.flush()
    first, second = w.answer("421 4.3.0 going down")
    assert isinstance(first, Done) and (first.outcome.kind, first.outcome.code) == (Kind.TEMPORARY, 421)
    assert isinstance(second, Unanswered) and second.env.id == "m2"


def test_connection_lost_after_the_end_of_data() -> None:
    w = Wire()
    w.add(env(1))
    w.flush()
    w.answer("250 ok", "250 ok", "354 go")
    w.add(env(2))
    w.flush()
    first, second = w.client.lost("connection closed by relay", closed_by_relay=True)
    # The body went: its fate is unknown, so not sent; and it counts (it may be what makes the relay hang up).
    assert isinstance(first, Done) and first.outcome.kind is Kind.TEMPORARY and first.outcome.code is None
    assert first.outcome.reply == "end of data: connection closed by relay" and first.outcome.lost_in_data
    # Its companion was never answered: tried again on a new session, not failed.
    assert isinstance(second, Unanswered) and second.env.id == "m2"
    assert w.client.closed and not w.client.waiting


def test_connection_lost_before_the_end_of_data() -> None:
    # Envelope accepted, lost waiting for DATA's reply: counts toward max-fails.
    w = Wire()
    w.add(env(1, "a@x.test", "b@x.test"))
    w.flush()
    w.answer("250 ok", "250 ok", "550 no")
    [at_data] = w.client.lost("connection closed by relay", closed_by_relay=True)
    o = at_data.outcome  # type: ignore[union-attr]
    assert o.kind is Kind.TEMPORARY and o.reply == "DATA: connection closed by relay" and o.lost_in_data
    assert [(x.kind, x.code) for x in o.recipients] == [(Kind.TEMPORARY, None), (Kind.PERMANENT, 550)]
    # Lost before any recipient was accepted: not the message's doing.
    w = Wire()
    w.add(env(1, "a@x.test", "b@x.test"))
    w.flush()
    w.answer("250 ok")
    [at_rcpt] = w.client.lost("connection closed by relay", closed_by_relay=True)
    assert at_rcpt.outcome.reply == "RCPT TO: connection closed by relay"  # type: ignore[union-attr]
    assert not at_rcpt.outcome.lost_in_data  # type: ignore[union-attr]
    # Nothing answered at all: untouched.
    w = Wire()
    w.add(env(1))
    w.flush()
    assert w.client.lost("connection closed by relay", closed_by_relay=True) == [
        Unanswered(env(1), "MAIL FROM: connection closed by relay")]


def test_a_timeout_is_not_a_hang_up() -> None:
    w = Wire()
    w.add(env(1))
    w.flush()
    w.answer("250 ok", "250 ok", "354 go")
    w.flush()
    [done] = w.client.lost("timed out after 120s", closed_by_relay=False)
    assert done.outcome.kind is Kind.TEMPORARY and not done.outcome.lost_in_data  # type: ignore[union-attr]


def test_a_reply_nobody_asked_for_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Client(PIPE).receive(r("250 ok"))


def test_adding_while_an_envelope_is_in_flight_is_refused() -> None:
    w = Wire()
    w.add(env(1))
    with pytest.raises(RuntimeError):
        w.client.add(env(2))


# -- one command at a time


def test_without_pipelining_one_command_per_write() -> None:
    w = Wire(PLAIN)
    w.add(env(1, "a@x.test", "b@x.test"))
    assert w.flush() == b"MAIL FROM:<from@x.test>\r\n"
    w.answer("250 ok")
    assert w.flush() == b"RCPT TO:<a@x.test>\r\n"
    w.answer("250 ok")
    assert w.flush() == b"RCPT TO:<b@x.test>\r\n"
    assert not w.client.ready_for_next
    w.answer("250 ok")
    assert w.flush() == b"DATA\r\n"
    w.answer("354 go")
    assert w.flush() == encode_body(env(1).raw)
    assert not w.client.ready_for_next  # the next message waits for this reply
    [done] = w.answer("250 queued")
    assert done.outcome.kind is Kind.SENT and w.client.ready_for_next  # type: ignore[union-attr]


def test_pipelining_off_by_configuration_even_when_offered() -> None:
    w = Wire(PIPE, pipelining=False)
    w.add(env(1))
    assert w.flush() == b"MAIL FROM:<from@x.test>\r\n"


def test_without_pipelining_a_refused_mail_stops_at_once() -> None:
    w = Wire(PLAIN)
    w.add(env(1, "a@x.test", "b@x.test"))
    w.flush()
    [done] = w.answer("550 5.7.1 no")
    assert done.outcome.code == 550  # type: ignore[union-attr]
    assert w.flush() == b"RSET\r\n"
    assert b"RCPT" not in w.wire and b"DATA" not in w.wire


def test_without_pipelining_no_data_when_every_recipient_refused() -> None:
    w = Wire(PLAIN)
    w.add(env(1, "a@x.test", "b@x.test"))
    w.flush()
    w.answer("250 ok")
    w.flush()
    w.answer("550 gone")
    w.flush()
    [done] = w.answer("550 gone")
    assert done.outcome.kind is Kind.PERMANENT  # type: ignore[union-attr]
    assert w.flush() == b"RSET\r\n" and b"DATA" not in w.wire


def test_a_failed_reset_closes_the_session() -> None:
    w = Wire(PLAIN)
    w.add(env(1))
    w.flush()
    w.answer("550 no")
    w.flush()
    w.answer("500 what")
    assert w.client.closed and not w.client.ready_for_next
