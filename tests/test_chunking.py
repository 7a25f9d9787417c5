"""BDAT windows (RFC 3030 CHUNKING over RFC 2920 PIPELINING) in the sans-I/O
client, pure: replies in, bytes out, no server.

Each test scripts what a relay answers to a window of messages written
without waiting, and checks what the client writes and decides: every
outcome on the right message and recipient, an RSET wherever a failed BDAT
could have left the session undetermined, and each message settled exactly
once whatever point of the window a refusal, a 421 or a lost connection
hits. The same rules against a real Postfix smtpd are in test_postfix.py.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailmand.smtp.protocol import (
    Client,
    Done,
    Envelope,
    Event,
    Extensions,
    Kind,
    Reply,
    Unanswered,
    Window,
    classify,
)
from mailmand.smtp.wire import bdat_last, canonical

CHUNK = Extensions(pipelining=True, eightbitmime=True, chunking=True)


def env(n: int, *rcpt: str, raw: bytes | None = None) -> Envelope:
    body = raw if raw is not None else f"Subject: {n}\r\n\r\nbody {n}\r\n".encode()
    return Envelope(f"m{n}", "from@x.test", rcpt or ("a@x.test",), body)


class Wire:
    """A chunking client and everything it wrote, write by write."""

    def __init__(self, ext: Extensions = CHUNK, window: Window | None = None, **kw: bool) -> None:
        self.client = Client(ext, window=window, **kw)
        self.writes: list[bytes] = []
        self.events: list[Event] = []

    def add(self, *envs: Envelope) -> None:
        for e in envs:
            assert self.client.add(e) is None

    def flush(self) -> bytes:
        out = self.client.outgoing()
        if out:
            self.writes.append(out)
        return out

    def answer(self, *lines: str) -> list[Event]:
        got: list[Event] = []
        for line in lines:
            got += self.client.receive(Reply(int(line[:3]), line))
        self.events += got
        return got

    @property
    def wire(self) -> bytes:
        return b"".join(self.writes)

    def done(self) -> dict[str, Done]:
        return {e.env.id: e for e in self.events if isinstance(e, Done)}


def commands(wire: bytes) -> list[bytes]:
    """The command lines of a BDAT stream, each chunk's octets skipped by its count."""
    out, i = [], 0
    while i < len(wire):
        end = wire.index(b"\r\n", i)
        line = wire[i:end]
        out.append(line)
        i = end + 2
        if m := re.fullmatch(rb"BDAT (\d+) LAST", line):
            i += int(m[1])
    return out


# -- what goes out


def test_a_window_goes_out_in_one_write_before_any_reply() -> None:
    w = Wire()
    w.add(env(1), env(2, "a@x.test", "b@x.test"), env(3))
    [write] = [w.flush()]
    body1, n1 = bdat_last(env(1).raw)
    assert write.startswith(b"MAIL FROM:<from@x.test>\r\nRCPT TO:<a@x.test>\r\n" + body1)
    assert commands(write) == [
        b"MAIL FROM:<from@x.test>", b"RCPT TO:<a@x.test>", f"BDAT {n1} LAST".encode(),
        # Every later message opens with RSET: the BDAT before it is unanswered and may fail.
        b"RSET", b"MAIL FROM:<from@x.test>", b"RCPT TO:<a@x.test>", b"RCPT TO:<b@x.test>",
        f"BDAT {bdat_last(env(2).raw)[1]} LAST".encode(),
        b"RSET", b"MAIL FROM:<from@x.test>", b"RCPT TO:<a@x.test>", f"BDAT {bdat_last(env(3).raw)[1]} LAST".encode()]
    assert all(write.count(f"body {i}".encode()) == 1 for i in (1, 2, 3))
    assert w.client.ready_for_next and w.client.body_pending


def test_the_body_is_counted_not_dot_stuffed_and_gets_crlf_line_ends() -> None:
    raw = b"Subject: x\n\n.leading dot\r\n..two\rlast line"
    w = Wire()
    w.add(env(1, raw=raw))
    out = w.flush()
    body = b"Subject: x\r\n\r\n.leading dot\r\n..two\r\nlast line\r\n"
    assert canonical(raw) == body
    assert out.endswith(b"BDAT %d LAST\r\n" % len(body) + body)
    assert not out.endswith(b".\r\n")  # no end-of-data marker either


def test_a_reused_session_carries_one_message_until_the_relay_answers() -> None:
    w = Wire(reused=True)
    w.add(env(1))
    assert not w.client.ready_for_next  # the relay may have closed it while it sat in the pool
    [write] = [w.flush()]
    assert commands(write)[0] == b"MAIL FROM:<from@x.test>"
    [lost] = w.client.lost("connection closed by relay", closed_by_relay=True)
    assert isinstance(lost, Done) and lost.env.id == "m1"  # one message undecided, not a window
    w = Wire(reused=True)
    w.add(env(1))
    w.flush()
    w.answer("250 ok")  # alive: the window opens
    assert w.client.ready_for_next
    w.add(*(env(i) for i in range(2, 17)))
    assert not w.client.ready_for_next


def test_the_window_is_full_at_its_message_count() -> None:
    w = Wire(window=Window(messages=3))
    w.add(env(1), env(2), env(3))
    assert not w.client.ready_for_next
    with pytest.raises(RuntimeError):
        w.client.add(env(4))
    w.flush()
    w.answer("250 ok", "250 ok")
    assert not w.client.ready_for_next  # m1's BDAT is not answered yet
    [done] = w.answer("250 2.0.0 queued")
    assert done.env.id == "m1" and w.client.ready_for_next  # a place is free
    w.add(env(4))
    assert commands(w.flush())[:2] == [b"RSET", b"MAIL FROM:<from@x.test>"]


def test_the_window_is_full_at_its_octet_count_but_always_takes_one() -> None:
    big = env(1, raw=b"x" * 5000)
    w = Wire(window=Window(messages=8, octets=4096))
    w.add(big)  # over the octet window on its own: it still goes, alone
    assert not w.client.ready_for_next
    w.flush()
    w.answer("250 ok", "250 ok", "250 queued")
    assert w.client.ready_for_next
    w.add(env(2), env(3))
    assert w.client.ready_for_next  # two small bodies are well under 4 KiB
    w.add(env(4, raw=b"y" * 4100))
    assert not w.client.ready_for_next


def test_the_default_window_is_16_messages_or_1_mib() -> None:
    w = Wire()
    for i in range(16):
        assert w.client.ready_for_next
        w.add(env(i))
    assert not w.client.ready_for_next
    w = Wire()
    w.add(env(1, raw=b"x" * (1 << 20)))  # a body of 1 MiB + CRLF fills it alone
    assert not w.client.ready_for_next
    w = Wire()
    w.add(env(1, raw=b"x" * ((1 << 20) - 100)))
    assert w.client.ready_for_next


def test_window_must_hold_something() -> None:
    with pytest.raises(ValueError):
        Window(messages=0)
    with pytest.raises(ValueError):
        Window(octets=0)


@pytest.mark.parametrize(("ext", "kw", "expect"), [
    (Extensions(pipelining=True, chunking=False), {}, b"DATA"),  # not offered
    (CHUNK, {"chunking": False}, b"DATA"),  # smtp.chunking: off
    (CHUNK, {"pipelining": False}, None),  # smtp.pipelining: off: one command at a time
    (Extensions(pipelining=False, chunking=True), {}, None),  # BDAT only rides a pipeline
])
def test_bdat_only_with_chunking_and_pipelining(ext: Extensions, kw: dict[str, bool], expect: bytes | None) -> None:
    w = Wire(ext, **kw)
    w.add(env(1))
    out = commands(w.flush())
    assert b"BDAT" not in b"".join(out)
    assert out[-1] == (expect or b"MAIL FROM:<from@x.test>")
    assert not w.client.ready_for_next  # and no window: DATA's rules
    for reply in ["250 ok", "250 ok", "354 go", "250 queued"]:
        w.answer(reply)
        w.flush()
    assert w.wire.endswith(b"DATA\r\nSubject: 1\r\n\r\nbody 1\r\n.\r\n")
    assert w.done()["m1"].outcome.kind is Kind.SENT


# -- replies matched in order


def test_every_outcome_of_a_window_lands_on_its_message_and_recipient() -> None:
    w = Wire()
    w.add(env(1), env(2, "ok@x.test", "later@x.test", "gone@x.test"), env(3, "gone@x.test"),
          env(4, "a@x.test"), env(5), env(6), env(7))
    w.flush()
    w.answer("250 2.1.0 ok", "250 2.1.5 ok", "250 2.0.0 1 queued as A",  # m1 sent
             "250 2.0.0 reset", "250 ok", "250 ok", "451 4.3.0 later", "550 5.1.1 gone", "250 2.0.0 queued as B",
             "250 reset", "250 ok", "550 5.1.1 gone", "554 5.5.1 Error: no valid recipients",  # m3: no recipient
             "250 reset", "553 5.7.1 sender refused", "503 5.5.1 need MAIL", "503 5.5.1 need RCPT",  # m4
             "250 reset", "250 ok", "250 ok", "550 5.7.1 content refused",  # m5: refused at the end
             "250 reset", "250 ok", "250 ok", "451 4.3.0 try again",  # m6: deferred at the end
             "250 reset", "250 ok", "250 ok", "250 2.0.0 queued as G")
    done = w.done()
    assert [e.env.id for e in w.events] == [f"m{i}" for i in range(1, 8)]  # in the relay's order, once each

    def o(i: int) -> tuple[Kind, int | None]:
        return done[f"m{i}"].outcome.kind, done[f"m{i}"].outcome.code

    assert o(1) == (Kind.SENT, 250) and done["m1"].outcome.reply == "250 2.0.0 1 queued as A"
    assert o(2) == (Kind.SENT, 250)
    assert [(r.address, r.kind, r.code) for r in done["m2"].outcome.recipients] == [
        ("ok@x.test", Kind.SENT, 250), ("later@x.test", Kind.TEMPORARY, 451), ("gone@x.test", Kind.PERMANENT, 550)]
    # No recipient: the RCPT's reply decides, not the BDAT's complaint about it.
    assert o(3) == (Kind.PERMANENT, 550) and done["m3"].outcome.reply == "550 5.1.1 gone"
    assert o(4) == (Kind.PERMANENT, 553)
    assert all(r.code == 553 for r in done["m4"].outcome.recipients)
    assert o(5) == (Kind.PERMANENT, 550) and done["m5"].outcome.recipients[0].reply == "550 5.7.1 content refused"
    assert o(6) == (Kind.TEMPORARY, 451)
    assert o(7) == (Kind.SENT, 250) and done["m7"].outcome.reply == "250 2.0.0 queued as G"
    assert not w.client.waiting and w.flush() == b""  # the last BDAT succeeded: nothing to reset


def test_a_failed_last_bdat_is_followed_by_rset() -> None:
    w = Wire()
    w.add(env(1))
    w.flush()
    [done] = w.answer("250 ok", "250 ok", "452 4.3.1 insufficient storage")
    assert done.outcome.kind is Kind.TEMPORARY  # type: ignore[union-attr]
    # RFC 3030 §2: after a failed BDAT the state is undetermined; RSET before anything else.
    assert w.flush() == b"RSET\r\n"
    assert w.client.ready_for_next
    w.add(env(2))  # the RSET already queued clears the way: no second one
    assert commands(w.flush())[0] == b"MAIL FROM:<from@x.test>"
    assert w.answer("250 reset") == []
    [done2] = w.answer("250 ok", "250 ok", "250 queued")
    assert done2.outcome.kind is Kind.SENT  # type: ignore[union-attr]


def test_a_sent_last_bdat_needs_no_rset() -> None:
    w = Wire()
    w.add(env(1))
    w.flush()
    w.answer("250 ok", "250 ok", "250 queued")
    w.add(env(2))
    assert commands(w.flush())[0] == b"MAIL FROM:<from@x.test>"


def test_a_relay_that_accepts_the_bdat_of_a_refused_envelope_delivered_nothing() -> None:
    w = Wire()
    w.add(env(1), env(2))
    w.flush()
    w.answer("550 no", "503 need MAIL", "250 ok?", "250 reset", "250 ok", "450 later", "250 ok?")
    done = w.done()
    assert (done["m1"].outcome.kind, done["m1"].outcome.code) == (Kind.PERMANENT, 550)
    assert (done["m2"].outcome.kind, done["m2"].outcome.code) == (Kind.TEMPORARY, 450)


def test_a_refused_reset_closes_the_session_and_unsettles_the_message_after_it() -> None:
    w = Wire()
    w.add(env(1), env(2), env(3))
    w.flush()
    w.answer("250 ok", "250 ok", "550 content refused", "502 no RSET here")
    assert w.client.closed and not w.client.ready_for_next
    # m2 ran on a session whose state the relay would not reset: its refusal may be that state's.
    w.answer("503 5.5.1 nested MAIL command", "250 ok", "503 bad sequence")
    assert w.done()["m2"].outcome.kind is Kind.TEMPORARY
    w.answer("250 reset", "250 ok", "250 ok", "250 queued")
    assert w.done()["m3"].outcome.kind is Kind.SENT  # what the relay took stays taken


# -- 421 and lost connections in the middle of a window


def test_421_at_a_bdat_settles_that_message_and_hands_back_the_rest() -> None:
    w = Wire()
    w.add(env(1), env(2), env(3), env(4))
    w.flush()
    events = w.answer("250 ok", "250 ok", "250 queued", "250 reset", "250 ok", "250 ok", "421 4.3.2 shutting down")
    m1, m2, m3, m4 = events
    assert isinstance(m1, Done) and m1.outcome.kind is Kind.SENT
    assert isinstance(m2, Done) and (m2.outcome.kind, m2.outcome.code) == (Kind.TEMPORARY, 421)
    # The relay stops reading at its 421: what it never answered it never took.
    assert m3 == Unanswered(env(3), "MAIL FROM: 421 4.3.2 shutting down", 421)
    assert isinstance(m4, Unanswered) and m4.env.id == "m4"
    assert w.client.closed and not w.client.waiting and w.flush() == b""


def test_421_to_an_opening_rset() -> None:
    w = Wire()
    w.add(env(1), env(2))
    w.flush()
    m1, m2 = w.answer("250 ok", "250 ok", "250 queued", "421 bye")
    assert isinstance(m1, Done) and m1.outcome.kind is Kind.SENT
    assert m2 == Unanswered(env(2), "MAIL FROM: 421 bye", 421)


def test_connection_lost_with_the_window_half_answered() -> None:
    w = Wire()
    w.add(env(1), env(2, "a@x.test", "b@x.test"), env(3), env(4))
    w.flush()
    w.add(env(5))  # added, never handed to the socket
    [m1] = w.answer("250 ok", "250 ok", "250 queued as A", "250 reset", "250 ok", "550 gone", "250 ok")
    assert m1.env.id == "m1"
    events = w.client.lost("connection closed by relay", closed_by_relay=True)
    by_id = {e.env.id: e for e in events}
    assert sorted(by_id) == ["m2", "m3", "m4", "m5"] and len(events) == 4  # m1 is not settled twice
    m2 = by_id["m2"]
    assert isinstance(m2, Done)
    # Its envelope was accepted and its body sent: its fate is unknown, and it counts.
    assert (m2.outcome.kind, m2.outcome.code) == (Kind.TEMPORARY, None)
    assert m2.outcome.reply == "BDAT: connection closed by relay"
    assert m2.outcome.lost_in_data
    assert [(r.kind, r.code) for r in m2.outcome.recipients] == [(Kind.PERMANENT, 550), (Kind.TEMPORARY, None)]
    # m3 and m4 went out whole with their MAIL: the relay may have queued them before
    # the line went. Deferred, not handed back for another try at once on a new session.
    for i in (3, 4):
        e = by_id[f"m{i}"]
        assert isinstance(e, Done) and e.outcome.kind is Kind.TEMPORARY and e.outcome.code is None
        assert e.outcome.reply == "MAIL FROM: connection closed by relay" and not e.outcome.lost_in_data
    # m5 never left: nothing of it reached the relay.
    assert by_id["m5"] == Unanswered(env(5), "MAIL FROM: connection closed by relay")
    assert w.client.closed and not w.client.waiting and w.client.outgoing() == b""


def test_a_timeout_in_the_window_is_not_a_hang_up() -> None:
    w = Wire()
    w.add(env(1))
    w.flush()
    w.answer("250 ok", "250 ok")
    [done] = w.client.lost("timed out after 120s", closed_by_relay=False)
    assert isinstance(done, Done) and not done.outcome.lost_in_data and done.outcome.kind is Kind.TEMPORARY


# -- any refusal, 421 or loss at any point of any window: the model


CODES = st.sampled_from([250, 250, 250, 421, 451, 530, 550, 554])
Script = tuple[int, tuple[int, ...], int]  # MAIL, each RCPT, BDAT


def expected(mail: int, rcpts: tuple[int, ...], bdat: int) -> Kind:
    """What the relay's replies to one message mean, written out plainly."""
    if mail // 100 != 2:
        return Kind.TEMPORARY if mail in (530,) or mail // 100 == 4 else Kind.PERMANENT
    if not any(r // 100 == 2 for r in rcpts):
        return Kind.TEMPORARY if any(r // 100 == 4 for r in rcpts) else Kind.PERMANENT
    return classify(bdat)


@settings(max_examples=300, deadline=None)
@given(scripts=st.lists(st.tuples(CODES, st.lists(CODES, min_size=1, max_size=3).map(tuple), CODES),
                        min_size=1, max_size=6),
       rset_codes=st.lists(st.sampled_from([250, 250, 250, 421]), min_size=6, max_size=6),
       cut=st.none() | st.integers(min_value=0, max_value=40))
def test_every_message_of_a_window_is_settled_once_and_rightly(
        scripts: list[Script], rset_codes: list[int], cut: int | None) -> None:
    envs = [Envelope(f"m{i}", "f@x.test", tuple(f"r{j}@x.test" for j in range(len(rc))),
                     f"Subject: {i}\r\n\r\nbody-{i}\r\n".encode()) for i, (_, rc, _) in enumerate(scripts)]
    client = Client(CHUNK, window=Window(messages=len(envs)))
    for e in envs:
        assert client.add(e) is None
    wire = client.outgoing()
    # Out: each body once; an RSET before every MAIL but the first.
    assert [wire.count(f"body-{i}\r\n".encode()) for i in range(len(envs))] == [1] * len(envs)
    assert commands(wire).count(b"RSET") == len(envs) - 1

    replies: list[int] = []
    for i, (mail, rcpts, bdat) in enumerate(scripts):
        replies += ([rset_codes[i]] if i else []) + [mail, *rcpts, bdat]
    events: list[Event] = []
    fed = 0
    for code in replies:
        if cut is not None and fed == cut or not client.waiting:
            break
        events += client.receive(Reply(code, f"{code} scripted"))
        fed += 1
    events += client.lost("connection closed by relay", closed_by_relay=True) if client.waiting else []

    assert sorted(e.env.id for e in events) == sorted(e.id for e in envs)  # each settled, exactly once
    closed_at = next((n for n, c in enumerate(replies[:fed]) if c == 421), None)
    position = 0
    for i, (mail, rcpts, bdat) in enumerate(scripts):
        own = ([rset_codes[i]] if i else []) + [mail, *rcpts, bdat]
        start, position = position, position + len(own)
        event = next(e for e in events if e.env.id == f"m{i}")
        if position <= fed and (closed_at is None or closed_at >= position):
            # Every reply of it came, before any 421: its own replies decide.
            assert isinstance(event, Done)
            assert event.outcome.kind is expected(mail, rcpts, bdat), (own, event)
            assert event.outcome.kind is not Kind.SENT or bdat == 250
        elif closed_at is not None and closed_at < position:
            # A 421 at or before its end: never sent; handed back if its MAIL was never answered.
            assert isinstance(event, Done) and event.outcome.kind is not Kind.SENT or isinstance(event, Unanswered)
            if closed_at < start + (1 if i else 0) + 1:
                assert isinstance(event, Unanswered)
        else:
            # Cut off: written, so its fate is unknown: deferred, never sent, never handed back.
            assert isinstance(event, Done) and event.outcome.kind is Kind.TEMPORARY
            assert event.outcome.code is None


# -- the switch


def test_chunking_is_auto_by_default_and_off_unquoted_is_off() -> None:
    from mailmand.config import parse

    relay = {"email": {"server": {"smtp": {"host": "relay.test"}}}}
    assert parse(relay).server.smtp.chunking == "auto"
    off = {"email": {"server": {"smtp": {"host": "relay.test", "chunking": False}}}}  # YAML's bare `off`
    assert parse(off).server.smtp.chunking == "off"


def test_a_bad_chunking_value_names_the_key() -> None:
    from mailmand.config import parse
    from mailmand.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse({"email": {"server": {"smtp": {"host": "relay.test", "chunking": "yes"}}}})
    assert str(err.value) == 'email.server.smtp.chunking: expected one of auto, off, got "yes"'
