"""One door for bad input: every way in (Email, Email.from_bytes, sendmail, `mailmand
send`, the submission listener, the logging handler; the Django backend is in
test_django.py) refuses the same input with the same reason, and what any of them
queues, the daemon's ingest takes. Real spools, stores and listeners."""

from __future__ import annotations

import io
import json
import smtplib
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailmand import Client, Email
from mailmand import sendmail as shim
from mailmand.cli import main
from mailmand.config import SubmissionConfig
from mailmand.errors import HeaderInjection, InvalidAddress, InvalidMessage
from mailmand.ingest import Ingester
from mailmand.logging import MailHandler
from mailmand.queues import open_queue
from mailmand.raw import RawMessage
from mailmand.record import Record, new_id, validate
from mailmand.stores import open_store
from mailmand.submission import SubmissionServer

GOOD = ["ann@example.com", "Ann Lee <ann@example.com>", '"Lee, Ann" <ann@example.com>', "J. Smith <j@example.com>",
        "=?utf-8?q?Ann_L=C3=A9e?= <ann@example.com>", "ops@example.com, dev@example.com", "a@[127.0.0.1]",
        "ann@example.com (Ann)", "undisclosed-recipients:;", "o'neil+x@sub.example.org", "Ops\t<ops@example.com>"]
# Each is refused, never mended: getaddresses() and the email package's parser would
# deliver most of them somewhere ("ann@exa mple.com" to ann@exa).
BAD = ["ann@exa mple.com", "Ann <ann@example.com", "| b@sink.test", "a@b.com c@d.com", "to@other.com <to@example.com>",
       "ann@", "a..b@example.com", "<>", "a@-x.com", "a@b .com", "a @b.com", '"a b"@example.com',
       "x" * 65 + "@example.com", "a@b.com>", "Ann <a@b.com> x", "a(c)@example.com", "<@route:a@b.com>"]
NON_ASCII = ["Zoë <zoe@example.com>", "ann@bücher.example", "jürgen@example.com"]
# Each decodes to a line break or NUL: a reader would see a header of its own.
INJECTED = ["=?utf-8?q?a=0D=0ABcc:_x@evil.example?=", "=?utf-8?b?YQ0KQmNjOiB4QGV2aWwuZXhhbXBsZQ==?=",
            "=?utf-8?b?YQ0KQmNjOiB4QGV2aWwuZXhhbXBsZQ==?= =?utf-8?b?A?=",  # beside a word that does not decode
            "=?utf-8?q?a=00b?=", "x =?iso-8859-1?q?a=0Ab?= y", "=?utf-8?q?a=0AX-Injected:_1?="]
TEXTS = ["hello", "", "café", "=?utf-8?q?caf=C3=A9?=", "tab\there", "a\x01b", "(not a comment) <x@y>", *INJECTED]
NAMES = ["From", "To", "Cc", "Bcc", "Reply-To", "Sender", "Subject", "X-A", "Comments", "Content-Type"]
ADDRESS_NAMES = {"from", "to", "cc", "bcc", "reply-to", "sender"}


def reason(call) -> str | None:
    """What a call refused, as ingest records it (type aside), or None."""
    try:
        call()
    except InvalidMessage as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def head(fields: list[tuple[str, str]], eol: str = "\r\n") -> bytes:
    return "".join(f"{n}: {v}{eol}" for n, v in fields).encode("utf-8")


values = st.one_of(st.sampled_from([*GOOD, *BAD, *NON_ASCII, *TEXTS, "root"]),
                   st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=20))
fields_strategy = st.lists(st.tuples(st.sampled_from(NAMES), values), max_size=6)


# -- what enqueue accepts, ingest accepts ----------------------------------------------------


mostly_good = st.one_of(st.sampled_from(GOOD), values)  # about half of the messages get past the door


@settings(max_examples=400, deadline=None)
@given(sender_field=mostly_good, to_field=mostly_good, fields=fields_strategy, body=st.binary(max_size=60),
       eol=st.sampled_from(["\n", "\r\n"]), sender=st.sampled_from([None, "<>", "app@example.com", "root"]),
       recipients=st.sampled_from([None, ["ann@example.com"], ["root", "Ann <ann@example.com>"]]))
def test_a_raw_message_queued_by_any_entry_is_taken_by_ingest(sender_field, to_field, fields, body, eol, sender,
                                                              recipients):
    raw = head([("From", sender_field), ("To", to_field), *fields], eol) + eol.encode() + body
    try:
        record = RawMessage.parse(raw, sender=sender, recipients=recipients,
                                  local_domain="host.example").to_record(10**6)
    except InvalidMessage:
        return  # refused at the door, with a sentence; any other exception is a bug and fails here
    assert Record.from_json(json.loads(json.dumps(record.to_json()))) == record  # what ingest decodes


ascii_values = st.sampled_from([*GOOD, *BAD, *(t for t in TEXTS if t.isascii())])


@settings(max_examples=400, deadline=None)
@given(sender_field=st.one_of(st.sampled_from(GOOD), st.sampled_from(BAD)),
       to_field=st.one_of(st.sampled_from(GOOD), st.sampled_from(BAD)),
       extra=st.lists(st.tuples(st.sampled_from([n for n in NAMES if n != "Bcc"]),
                                st.one_of(st.sampled_from(["hello", "x@example.com"]), ascii_values)), max_size=3),
       order=st.randoms())
def test_the_door_and_ingest_refuse_a_raw_message_for_the_same_reason(sender_field, to_field, extra, order):
    """For a head the door leaves as it is (ASCII, no Bcc, no bare name, Date and Message-ID
    given), the door and ingest's validation accept the same messages and refuse the rest
    with the same words."""
    fields = [("From", sender_field), ("To", to_field), ("Date", "Mon, 1 Jan 2024 00:00:00 +0000"),
              ("Message-ID", "<given@example.com>"), *extra]
    order.shuffle(fields)
    raw = head(fields) + b"\r\nbody\r\n"
    at_the_door = reason(lambda: RawMessage.parse(raw, sender="app@example.com", recipients=["ann@example.com"])
                         .to_record(10**6))
    record = Record(id=new_id(), mail_from="app@example.com", rcpt_to=("ann@example.com",), raw=raw)
    assert reason(lambda: validate(record, max_size=10**6)) == at_the_door, raw
    assert reason(lambda: Record.from_json(record.to_json())) == at_the_door, raw  # ingest's decode


@settings(max_examples=300, deadline=None)
@given(sender=st.sampled_from([*GOOD, *BAD, *NON_ASCII]), to=st.sampled_from([*GOOD, *BAD, *NON_ASCII, "root"]),
       cc=st.lists(st.sampled_from([*GOOD, *BAD]), max_size=2), subject=st.one_of(st.sampled_from(TEXTS), st.text()),
       headers=st.dictionaries(st.sampled_from(["X-A", "x-a", "List-Id", "Message-ID", "Date"]),
                               st.sampled_from(TEXTS), max_size=3))
def test_an_email_queued_is_taken_by_ingest(sender, to, cc, subject, headers):
    try:
        record = Email(sender=sender, to=to, cc=cc, subject=subject, headers=headers, text="x").to_record(10**6)
    except InvalidMessage:
        return
    assert Record.from_json(json.loads(json.dumps(record.to_json()))) == record


@pytest.fixture
def door(make_config):
    """A client (the producer's door) and the daemon's side of the same spool and store."""
    cfg = make_config()
    client = Client(cfg)
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    yield client, Ingester(queue, store), store
    client.close()
    queue.close()
    store.close()


BAD_ENVELOPES = ["a b@example.com", "root", "x@-y.example", "ann@exämple.com", "a@b@c.example", "<ann@example.com>",
                 "ann@example.com\r\nRCPT TO:<x@evil.example>", "a\x00@example.com"]
ENVELOPES = ["ann@example.com", *BAD_ENVELOPES, ""]  # "" is the null sender: a sender only


def test_what_ingest_quarantines_put_refuses_with_the_same_reason(door):
    """Records written past every door (as a producer in another language could): the
    client's put and a real ingest into a real store agree on each, reason for reason."""
    client, ingester, store = door

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(fields=fields_strategy, mail_from=st.sampled_from(ENVELOPES), rcpt=st.sampled_from(ENVELOPES[:-1]))
    def check(fields, mail_from, rcpt):
        record = Record(id=new_id(), mail_from=mail_from, rcpt_to=(rcpt,), raw=head(fields) + b"\r\nx\r\n")
        refused = reason(lambda: client.put(record))
        client._put(record)  # past the door
        result = ingester.drain()
        if refused is None:
            assert (result.ingested, result.quarantined) == (1, 0)
        else:
            assert (result.ingested, result.quarantined) == (0, 1)
            assert refused.split(": ", 1)[1] == store.quarantined(1)[0].reason
        # The listener's group write is the same door.
        assert reason(lambda: client.put_many([record.replace(id=new_id())])) == refused
        assert ingester.drain().ingested == (refused is None)

    check()


# -- each way in refuses a bad address, naming it ----------------------------------------------

MESSAGES = {  # bad input, and the field the refusal names
    "space": (b"From: a@src.test\nTo: ann@exa mple.com\nSubject: s\n\nx\n", "header To"),
    "unbalanced": (b"From: App <a@src.test\nTo: b@sink.test\nSubject: s\n\nx\n", "header From"),
    "pipe": (b"From: a@src.test\r\nTo:| b@sink.test\r\nSubject: hi\r\n\r\nx", "header To"),
    "two in one": (b"From: a@src.test\nTo: b@sink.test\nCc: x@y.example z@w.example\n\nx\n", "header Cc"),
}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_from_bytes_refuses_a_bad_address_naming_the_field(name):
    raw, field = MESSAGES[name]
    with pytest.raises(InvalidAddress) as exc:
        Email.from_bytes(raw)
    assert exc.value.field == field and "not a valid email address" in str(exc.value)


@pytest.mark.parametrize("value", ["ann@exa mple.com", "Ann <ann@example.com", "to@other.com <to@example.com>",
                                   "a@b.com c@d.com"])
def test_email_refuses_a_bad_address_naming_the_argument(value):
    for field in ("to", "cc", "bcc", "reply_to"):
        with pytest.raises(InvalidAddress) as exc:
            Email(sender="a@example.com", **{"to": "b@example.com", field: value})
        assert exc.value.field == field


@pytest.mark.parametrize("bad", BAD)
def test_every_bad_address_is_refused_at_every_door_with_one_reason(bad):
    with pytest.raises(InvalidAddress) as composed:
        Email(sender="a@example.com", to=bad)
    assert composed.value.field == "to"
    with pytest.raises(InvalidAddress) as given:
        RawMessage.parse(b"From: a@src.test\r\nSubject: s\r\n\r\nx", recipients=[bad])
    assert given.value.field == "recipient"
    raw = f"From: a@src.test\r\nTo: {bad}\r\nDate: x\r\nMessage-ID: <m@src.test>\r\n\r\nx".encode()
    door = reason(lambda: RawMessage.parse(raw).to_record(10**6))
    assert door is not None and door.startswith("InvalidAddress: header To: not a valid email address"), door
    record = Record(id=new_id(), mail_from="a@src.test", rcpt_to=("b@sink.test",), raw=raw)
    assert reason(lambda: validate(record)) == door  # ingest's words too


HEADS = {  # a head a relay or a reader could misread, and what says so
    "NUL": (b"From: a@src.test\r\nSubject: a\x00b\r\n", HeaderInjection, "header Subject"),
    "control": (b"From: a@src.test\r\nSubject: a\x01b\r\n", InvalidMessage, "header Subject"),
    "bare CR": (b"From: a@src.test\r\nSubject: a\rBcc: x@evil.example\r\n", HeaderInjection, "header line 2"),
    "long line": (b"From: a@src.test\r\nX-Long: " + b"y" * 991 + b"\r\n", InvalidMessage, "header X-Long"),
    "no From": (b"To: b@sink.test\r\n", InvalidMessage, "header From"),
    "Bcc": (b"From: a@src.test\r\nBcc: x@sink.test\r\n", InvalidMessage, "header Bcc"),
    "orphan": (b" continued\r\nFrom: a@src.test\r\n", InvalidMessage, "header line 1"),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_a_head_a_relay_could_misread_is_refused_by_validation(name, door):
    """Past every door (a record written by another producer): refused by put, quarantined by ingest."""
    head_bytes, error, field = HEADS[name]
    client, ingester, store = door
    record = Record(id=new_id(), mail_from="a@src.test", rcpt_to=("b@sink.test",), raw=head_bytes + b"\r\nbody\r\n")
    with pytest.raises(error) as exc:
        client.put(record)
    assert exc.value.field == field
    client._put(record)
    assert ingester.drain().quarantined == 1
    assert store.quarantined(1)[0].reason == str(exc.value)
    if name not in ("no From", "Bcc"):  # the door adds a From and drops a Bcc
        with pytest.raises(error):
            RawMessage.parse(head_bytes + b"\r\nbody\r\n", recipients=["b@sink.test"])


@pytest.mark.parametrize("address", BAD_ENVELOPES)
def test_an_address_an_envelope_cannot_carry_is_refused_by_validation(address, door):
    """An SMTP command line carries a local part and a host name, nothing else: a space, a
    bracket, a second @, a line break (a second RCPT), a bare name, a Unicode domain."""
    client, ingester, store = door
    raw = b"From: a@src.test\r\n\r\nx\r\n"
    for record, field in ((Record(id=new_id(), mail_from="a@src.test", rcpt_to=(address,), raw=raw), "rcpt_to"),
                          (Record(id=new_id(), mail_from=address, rcpt_to=("b@sink.test",), raw=raw), "mail_from")):
        with pytest.raises(InvalidAddress, match=f"record.{field}: not an envelope address") as exc:
            client.put(record)
        client._put(record)
        assert ingester.drain().quarantined == 1
        assert store.quarantined(1)[0].reason == str(exc.value)


def sendmail_code(argv: list[str], data: bytes, conf: Path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code = shim.main(argv, config=str(conf))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", list(MESSAGES))
def test_sendmail_and_send_exit_65_naming_the_field_and_queue_nothing(name, write_config, tmp_path, monkeypatch,
                                                                      capsys):
    raw, field = MESSAGES[name]
    conf = write_config(9)
    code, err = sendmail_code(["-t", "-i"], raw, conf, monkeypatch, capsys)
    assert code == 65 and err.startswith(f"sendmail: {field}: not a valid email address"), err
    message = tmp_path / "message.eml"
    message.write_bytes(raw)
    assert main(["send", "-c", str(conf), str(message)]) == 65
    assert f"{field}: not a valid email address" in capsys.readouterr().err
    assert open_queue(Client(str(conf)).config.queue).pending() == 0


@pytest.mark.parametrize("value", INJECTED)
def test_an_encoded_word_decoding_to_a_line_break_is_refused_at_every_entry(value, write_config, tmp_path,
                                                                            monkeypatch, capsys):
    raw = f"From: a@src.test\nTo: b@sink.test\nX-A: {value}\nSubject: s\n\nx\n".encode()
    with pytest.raises(HeaderInjection) as exc:
        Email.from_bytes(raw)
    assert exc.value.field == "header X-A"
    subject = f"From: a@src.test\nTo: b@sink.test\nSubject: {value}\n\nx\n".encode()  # any field
    with pytest.raises(HeaderInjection):
        Email.from_bytes(subject)
    with pytest.raises(HeaderInjection):
        Email(sender="a@src.test", to="b@sink.test", subject=value)
    conf = write_config(9)
    code, err = sendmail_code(["-t"], raw, conf, monkeypatch, capsys)
    assert code == 65 and "sendmail: header X-A: an encoded word (RFC 2047) in it decodes to" in err, err
    message = tmp_path / "message.eml"
    message.write_bytes(raw)
    assert main(["send", "-c", str(conf), str(message)]) == 65
    assert open_queue(Client(str(conf)).config.queue).pending() == 0


def test_the_logging_handler_queues_nothing_for_an_injected_subject(make_config, monkeypatch):
    cfg = make_config()
    client = Client(cfg)
    handler = MailHandler(None, "app@example.com", ["ops@example.com"], INJECTED[0], client=client)
    failed: list[object] = []
    monkeypatch.setattr(handler, "handleError", failed.append)
    handler.emit(handler_record := __import__("logging").makeLogRecord({"msg": "boom"}))
    assert failed == [handler_record]  # handled as a logging failure, never raised into the app
    assert open_queue(cfg.queue).pending() == 0
    client.close()


def test_sendmail_and_send_deliver_the_bytes_given(smtp_server, write_config, tmp_path, monkeypatch, capsys):
    """What the relay gets is what was handed over: fields as written, in their order (line
    ends CRLF), Bcc gone, Message-ID and Date added at the end; a bare name qualified."""
    relay = smtp_server()
    conf = write_config(relay.port)
    conf.write_text(conf.read_text() + "  sendmail:\n    domain: host.example\n")
    given = (b"From: =?utf-8?q?Cr=C3=B6n?= <cron@example.com>\nX-Z: last-first\nto:ops@example.com\n"
             b"Bcc: audit@example.com\nSubject:  two  spaces,\n\tfolded (kept)\nX-A: 1\n\nbody\n")
    assert sendmail_code(["-t"], given, conf, monkeypatch, capsys)[0] == 0
    message = tmp_path / "message.eml"
    message.write_bytes(b"From: root\nTo: ops@example.com\nX-B: 2\n\nbody\n")
    assert main(["send", "-c", str(conf), str(message)]) == 0
    assert main(["--once", "-c", str(conf)]) == 0
    by_sender = {m.mail_from: m for m in relay.messages}
    head, _, body = by_sender["cron@example.com"].data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[:6] == [b"From: =?utf-8?q?Cr=C3=B6n?= <cron@example.com>", b"X-Z: last-first",
                         b"to:ops@example.com", b"Subject:  two  spaces,", b"\tfolded (kept)", b"X-A: 1"]
    assert [line.split(b":")[0] for line in lines[6:]] == [b"Message-ID", b"Date"] and body == b"body\r\n"
    assert sorted(by_sender["cron@example.com"].rcpt_tos) == ["audit@example.com", "ops@example.com"]
    head = by_sender["root@host.example"].data.partition(b"\r\n\r\n")[0]
    assert head.split(b"\r\n")[:3] == [b"From: root@host.example", b"To: ops@example.com", b"X-B: 2"]


def test_send_flags_give_a_bare_name_the_domain(smtp_server, write_config):
    """`send --to root` is one more way in: the bare name gets email.sendmail.domain there
    too, in the envelope and in the fields, and an address with a domain is left as it is."""
    relay = smtp_server()
    conf = write_config(relay.port)
    conf.write_text(conf.read_text() + "  sendmail:\n    domain: host.example\n")
    assert main(["send", "-c", str(conf), "--from", "cron", "--to", "root", "--cc", "ops@example.com",
                 "--subject", "s", "--text", "x"]) == 0
    assert main(["--once", "-c", str(conf)]) == 0
    (got,) = relay.messages
    assert got.mail_from == "cron@host.example" and sorted(got.rcpt_tos) == ["ops@example.com", "root@host.example"]
    head = got.data.partition(b"\r\n\r\n")[0]
    assert b"From: cron@host.example" in head and b"To: root@host.example" in head


# -- the submission listener ---------------------------------------------------------------


@pytest.fixture
def listener(make_config):
    cfg = make_config(submission=SubmissionConfig(listen=("127.0.0.1:0",)))
    srv = SubmissionServer(cfg).start()
    yield srv.addresses[0][1], cfg
    srv.stop()


def data_reply(port: int, raw: bytes, sender: str = "a@src.test", rcpt: str = "b@sink.test") -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo()
        assert s.mail(sender)[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(raw)
        return code, text.decode()


@pytest.mark.parametrize("name", list(MESSAGES))
def test_the_listener_answers_553_naming_the_field(listener, name):
    port, cfg = listener
    raw, field = MESSAGES[name]
    code, text = data_reply(port, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    status = "5.1.7" if field == "header From" else "5.1.3"
    assert (code, text.split(":")[0]) == (553, f"{status} {field}"), text
    assert "not a valid email address" in text
    assert open_queue(cfg.queue).pending() == 0


@pytest.mark.parametrize("value", INJECTED)
def test_the_listener_answers_554_5_6_0_to_an_injected_field(listener, value):
    port, cfg = listener
    code, text = data_reply(port, f"From: a@src.test\r\nTo: b@sink.test\r\nX-A: {value}\r\n\r\nx\r\n".encode())
    assert code == 554 and text.startswith("5.6.0 message refused: header X-A: an encoded word"), text
    assert open_queue(cfg.queue).pending() == 0


def test_the_listener_keeps_the_bytes_and_gives_a_bare_name_the_domain(listener, monkeypatch):
    port, cfg = listener
    raw = (b"From: =?utf-8?q?Z=C3=B6e?= <a@src.test>\r\nX-Order: 2\r\nTo: root\r\nSubject:  spaced\r\n"
           b" folded\r\nBcc: hidden@sink.test\r\nX-Order: 1\r\n\r\nbody\r\n")
    client = Client(cfg)
    monkeypatch.setattr(Client, "local_domain", lambda self: "host.example")
    code, text = data_reply(port, raw)
    assert code == 250, text
    queue = open_queue(cfg.queue, daemon=True)
    [item] = queue.take(1)
    queue.close()
    client.close()
    record = Record.from_json(item.data)
    head, _, body = record.raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[:6] == [b"From: =?utf-8?q?Z=C3=B6e?= <a@src.test>", b"X-Order: 2", b"To: root@host.example",
                         b"Subject:  spaced", b" folded", b"X-Order: 1"]  # as given, in order; Bcc gone
    assert [line.split(b":")[0] for line in lines[6:]] == [b"Message-ID", b"Date"]
    assert body == b"body\r\n"


# -- the rest of the door ----------------------------------------------------------------


def test_lazy_strings_are_taken_wherever_strings_are():
    from django.utils.functional import lazystr

    email = Email(sender=lazystr("App <app@example.com>"), to=[lazystr("ann@example.com")], cc=lazystr("c@example.com"),
                  subject=lazystr("Grüße"), text=lazystr("body"), headers={"X-A": lazystr("v")},
                  idempotency_key=lazystr("k1"))
    email.attach(b"x", lazystr("a.txt"))
    record = email.to_record(10**6)
    assert record.mail_from == "app@example.com" and record.rcpt_to == ("ann@example.com", "c@example.com")
    assert record.subject == "Grüße"
    raw = RawMessage.parse(b"Subject: s\n\nx\n", sender=lazystr("app@example.com"),
                           recipients=[lazystr("ann@example.com")], from_name=lazystr("App"))
    assert raw.to_record(10**6).raw.startswith(b"Subject: s\r\nFrom: App <app@example.com>\r\n")
    with pytest.raises(InvalidAddress):
        Email(sender="a@example.com", to=[3])  # not a string, lazy or not


def test_sendmail_q_without_a_store_has_nothing_to_deliver(write_config, capsys):
    conf = write_config(9)
    assert shim.main(["-q"], config=str(conf)) == 0
    out = capsys.readouterr()
    assert out.out.startswith("nothing to deliver: no store yet at") and out.err == ""


def test_fails_counts_only_failed_attempts(smtp_server, write_config, capsys):
    """`list --json`: a message sent at its first attempt has failed 0 times; one refused
    for now (451) and then sent has failed once, in two attempts."""
    relay = smtp_server(rcpt_replies={"later@example.com": "451 4.2.1 try later"})
    conf = write_config(relay.port)
    client = Client(str(conf))
    first = client.enqueue(Email(sender="a@example.com", to="now@example.com", text="x"))
    second = client.enqueue(Email(sender="a@example.com", to="later@example.com", text="x"))
    client.close()
    assert main(["--once", "-c", str(conf)]) == 0
    relay.rcpt_replies = {}
    assert main(["flush", "-c", str(conf)]) == 0  # the deferred one is due now
    assert main(["--once", "-c", str(conf)]) == 0
    capsys.readouterr()
    assert main(["list", "-c", str(conf), "--json"]) == 0
    listed = {m["id"]: m for m in json.loads(capsys.readouterr().out)}
    assert (listed[first]["status"], listed[first]["attempts"], listed[first]["fails"]) == ("sent", 1, 0)
    assert (listed[second]["status"], listed[second]["attempts"], listed[second]["fails"]) == ("sent", 2, 1)
