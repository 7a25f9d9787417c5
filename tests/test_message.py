"""Composition: every kind of message survives enqueue → ingest → store, byte for byte."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from mailmand import Client, Email
from mailmand.errors import HeaderInjection, InvalidAddress, InvalidMessage, MessageTooLarge
from mailmand.ingest import Ingester
from mailmand.queues import open_queue
from mailmand.stores import open_store

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8


def roundtrip(cfg, email: Email):
    """Enqueue through the client, ingest as the daemon does, parse what the store holds."""
    client = Client(cfg)
    msg_id = client.enqueue(email)
    client.close()
    queue, store = open_queue(cfg.queue, daemon=True), open_store(cfg.server.database, create=True)
    try:
        assert Ingester(queue, store).drain().ingested == 1
        raw = store.raw(msg_id)
        info = store.get(msg_id)
    finally:
        queue.close()
        store.close()
    return info, raw, BytesParser(policy=policy.default).parsebytes(raw)


def test_text_only(make_config):
    info, raw, msg = roundtrip(make_config(), Email(sender="App <app@example.com>", to="ann@example.com",
                                                    subject="Hello", text="plain body"))
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().strip() == "plain body"
    assert msg["From"] == "App <app@example.com>" and msg["To"] == "ann@example.com"
    assert msg["Message-ID"] and msg["Date"]
    assert info.subject == "Hello" and info.rcpt_to == ("ann@example.com",)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF throughout, as SMTP wants


def test_html_only(make_config):
    _, _, msg = roundtrip(make_config(), Email(sender="a@example.com", to="b@example.com", html="<p>hi</p>"))
    assert msg.get_content_type() == "text/html"
    assert "<p>hi</p>" in msg.get_content()


def test_text_and_html_is_alternative(make_config):
    _, _, msg = roundtrip(make_config(), Email(sender="a@example.com", to="b@example.com",
                                               text="plain", html="<b>rich</b>"))
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_full_message_survives(make_config, tmp_path: Path):
    pdf = tmp_path / "invoice.pdf"
    pdf.write_bytes(PDF)
    e = Email(sender="App <app@example.com>", to=["Ann Ünicode <ann@example.com>"], cc="cc@example.com",
              bcc=["hidden@example.com", "Also Hidden <h2@example.com>"], reply_to="help@example.com",
              subject="Grüße", text="plain body", html='<p>html <img src="cid:X"></p>',
              headers={"X-Campaign": "welcome"}, read_receipt="app@example.com")
    e.attach(b"a,b\n1,2\n", "report.csv")
    e.attach_file(pdf)
    cid = e.embed(PNG, "logo.png")
    info, raw, msg = roundtrip(make_config(), e)

    assert set(info.rcpt_to) == {"ann@example.com", "cc@example.com", "hidden@example.com", "h2@example.com"}
    assert b"hidden@example.com" not in raw and b"h2@example.com" not in raw and b"Bcc" not in raw
    assert msg["Subject"] == "Grüße"
    assert msg["To"].addresses[0].display_name == "Ann Ünicode"
    assert msg["To"].addresses[0].addr_spec == "ann@example.com"
    assert b"=?utf-8?" in raw.split(b"\r\n\r\n")[0]  # RFC 2047 for the name
    assert b"<ann@example.com>" in raw  # the address itself untouched
    assert msg["Reply-To"] == "help@example.com" and msg["Cc"] == "cc@example.com"
    assert msg["X-Campaign"] == "welcome"
    assert msg["Disposition-Notification-To"] == "app@example.com"
    assert msg.get_content_type() == "multipart/mixed"
    alternative = next(msg.iter_parts())
    assert alternative.get_content_type() == "multipart/alternative"
    related = alternative.get_payload()[1]
    assert related.get_content_type() == "multipart/related"
    image = related.get_payload()[1]
    assert image["Content-ID"] == f"<{cid}>" and image.get_content() == PNG
    attachments = {p.get_filename(): p for p in msg.iter_attachments()}
    assert attachments["report.csv"].get_content_type() == "text/csv"
    assert attachments["report.csv"].get_payload(decode=True) == b"a,b\n1,2\n"
    assert attachments["invoice.pdf"].get_content_type() == "application/pdf"
    assert attachments["invoice.pdf"].get_content() == PDF


def test_from_bytes_takes_envelope_from_headers_and_drops_bcc(make_config):
    raw = (b"From: Old <old@example.com>\r\nTo: t@example.com\r\nCc: c@example.com\r\n"
           b"Bcc: secret@example.com\r\nSubject: parsed\r\n\r\nbody\r\n")
    e = Email.from_bytes(raw)
    info, stored, msg = roundtrip(make_config(), e)
    assert info.mail_from == "old@example.com"
    assert set(info.rcpt_to) == {"t@example.com", "c@example.com", "secret@example.com"}
    assert b"secret@example.com" not in stored and "Bcc" not in msg
    assert msg["Message-ID"] and msg["Subject"] == "parsed" and msg.get_content().strip() == "body"


BAD_INPUT = [
    (InvalidAddress, "to", dict(sender="a@example.com", to="not an address")),
    (InvalidAddress, "sender", dict(sender="nobody", to="b@example.com")),
    (InvalidAddress, "cc", dict(sender="a@example.com", to="b@example.com", cc=["x@@y"])),
    # getaddresses() drops the space and would deliver to ann@example.com
    (InvalidAddress, "to", dict(sender="a@example.com", to="ann@exa mple.com")),
    (InvalidAddress, "to", dict(sender="a@example.com", to="Ann <ann@exa mple.com>")),
    (InvalidAddress, "to", dict(sender="a@example.com", to="ann@bü..example")),
    (HeaderInjection, "subject", dict(sender="a@example.com", to="b@example.com", subject="a\u2028Bcc: x@y.com")),
    (HeaderInjection, "subject", dict(sender="a@example.com", to="b@example.com",
                                      subject="=?utf-8?q?a=0D=0AX-Injected:_1?=")),
    (HeaderInjection, "subject", dict(sender="a@example.com", to="b@example.com", subject="hi\r\nBcc: x@y.com")),
    (HeaderInjection, "headers[X-A]", dict(sender="a@example.com", to="b@example.com", headers={"X-A": "1\nX-B: 2"})),
    (HeaderInjection, "to", dict(sender="a@example.com", to="b@example.com\r\nBcc: c@example.com")),
    (InvalidMessage, "sender", dict(to="b@example.com")),
    (InvalidMessage, "to", dict(sender="a@example.com")),
    (InvalidMessage, "headers", dict(sender="a@example.com", to="b@example.com", headers={"Bad Name": "x"})),
    (InvalidMessage, "headers", dict(sender="a@example.com", to="b@example.com", headers={"X:Colon": "x"})),
]


@pytest.mark.parametrize("error,field,kwargs", BAD_INPUT, ids=[f"{c[1]}-{i}" for i, c in enumerate(BAD_INPUT)])
def test_bad_input_is_refused_and_nothing_is_queued(make_config, error, field, kwargs):
    cfg = make_config()
    with pytest.raises(error) as exc:
        Client(cfg).enqueue(Email(**kwargs))
    assert isinstance(exc.value, ValueError)
    assert exc.value.field == field and field in str(exc.value)
    assert open_queue(cfg.queue).pending() == 0


def test_missing_attachment_and_oversize_are_refused(make_config, tmp_path: Path):
    cfg = make_config(max_message_size=10_000)
    e = Email(sender="a@example.com", to="b@example.com", text="x")
    with pytest.raises(InvalidMessage, match="attachment.*no such file.*nope.pdf"):
        e.attach_file(tmp_path / "nope.pdf")
    e.attach(b"\0" * 20_000, "big.bin")
    client = Client(cfg)
    with pytest.raises(MessageTooLarge) as too_large:
        client.enqueue(e)
    size = int(str(too_large.value).split("bytes as encoded")[0].rsplit(" ", 1)[0].split()[-1])
    assert size > 20_000 * 4 // 3  # base64: the 20,000 bytes grew by a third, and that is the size shown
    assert f"{size} bytes as encoded for sending, over max-message-size (10000 bytes)" in str(too_large.value)
    assert "attachments grow by about a third" in str(too_large.value)
    assert open_queue(cfg.queue).pending() == 0


def test_non_ascii_display_name_in_sender(make_config):
    _, raw, msg = roundtrip(make_config(), Email(sender="Zoë Café <zoe@example.com>", to="b@example.com", text="x"))
    assert msg["From"].addresses[0].display_name == "Zoë Café"
    assert b"zoe@example.com" in raw


def test_idn_domains_become_punycode_in_envelope_and_headers(make_config):
    info, raw, msg = roundtrip(make_config(), Email(sender="Jürgen <j@bücher.example>", to="ann@bücher.example",
                                                    subject="IDN", text="x"))
    assert info.mail_from == "j@xn--bcher-kva.example" and info.rcpt_to == ("ann@xn--bcher-kva.example",)
    assert msg["To"] == "ann@xn--bcher-kva.example"
    assert msg["From"].addresses[0].domain == "xn--bcher-kva.example"
    assert raw.isascii()


def test_a_utf8_local_part_goes_out_as_smtputf8(make_config):
    info, raw, msg = roundtrip(make_config(), Email(sender="a@example.com", to="jürgen@bücher.example",
                                                    subject="s", text="x"))
    assert info.rcpt_to == ("jürgen@xn--bcher-kva.example",)  # the relay side asks for SMTPUTF8
    assert "To: jürgen@xn--bcher-kva.example".encode() in raw  # a UTF-8 header (RFC 6532), not an encoded word


# -- header injection through RFC 2047 encoded words ----------------------

# Every code point the email package treats as a line break when it folds a header.
BREAKS = ["\r\n", "\r", "\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def _word(text: str, how: str) -> str:
    """`text` as one RFC 2047 encoded word, q or b."""
    import base64

    data = text.encode("utf-8")
    if how == "b":
        return f"=?utf-8?b?{base64.b64encode(data).decode()}?="
    q = "".join(chr(b) if chr(b).isalnum() and b < 128 else "_" if b == 32 else f"={b:02X}" for b in data)
    return f"=?utf-8?q?{q}?="


def _field(where: str, value: str) -> Email:
    """`value` in one of the fields a caller controls."""
    base: dict = dict(sender="a@example.com", to="b@example.com", text="x")
    if where == "subject":
        return Email(**base, subject=value)
    if where == "header":
        return Email(**base, headers={"X-Custom": value})
    if where == "sender-name":
        return Email(**{**base, "sender": f'"{value}" <a@example.com>'})
    if where == "to-name":
        return Email(**{**base, "to": [f"{value} <b@example.com>"]})
    if where == "reply-to-name":
        return Email(**base, reply_to=f'"{value}" <r@example.com>')
    e = Email(**base)
    e.attach(b"data", value, "application/pdf")
    return e


FIELDS = ["subject", "header", "sender-name", "to-name", "reply-to-name", "filename"]


def test_encoded_words_decoding_to_a_line_break_are_refused_everywhere():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(where=st.sampled_from(FIELDS), how=st.sampled_from(["q", "b"]), brk=st.sampled_from(BREAKS),
           before=st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=8),
           header=st.sampled_from(["Bcc: x@evil.example", "Reply-To: x@evil.example", "Content-Type: text/html",
                                   "X-Injected: 1"]))
    def check(where, how, brk, before, header):
        value = _word(before + brk + header, how)
        with pytest.raises(HeaderInjection):
            _field(where, value).to_record(10**7)

    check()


def test_encoded_words_without_line_breaks_never_add_a_header():
    """Whatever the caller writes in a field, the flattened message has only the headers it asked for."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(where=st.sampled_from(FIELDS), how=st.sampled_from(["q", "b", "raw"]),
           text=st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30))
    def check(where, how, text):
        value = text if how == "raw" else _word(text, how)
        try:
            raw = _field(where, value).to_record(10**7).raw
        except InvalidMessage:
            return  # refused: fine (a name that is not a legal display name, say)
        names = [k.lower() for p in BytesParser(policy=policy.compat32).parsebytes(raw).walk() for k in p.keys()]
        assert set(names) <= {"from", "to", "reply-to", "subject", "date", "message-id", "mime-version",
                              "content-type", "content-transfer-encoding", "content-disposition", "x-custom"}
        assert names.count("bcc") == 0

    check()


@pytest.mark.parametrize("injected,says", [
    ("X-Injected: 1", "'x-injected' field(s) where 0 were given: it gained a header nobody gave"),
    ("Bcc: x@evil.example", "'bcc' field(s) where 0 were given"),  # a name mailmand owns
    ("To: x@evil.example", "2 'to' field(s) where 1 were given"),  # one more of a name that was given
    ("Reply-To: x@evil.example", "'reply-to' field(s) where 0 were given"),
])
def test_a_flattened_message_that_gains_a_header_is_refused(monkeypatch, injected, says):
    """The last line of defence: whatever slipped past the field checks, the composed head
    has exactly the fields given, names and counts, the owned ones included."""
    import mailmand.message as m

    monkeypatch.setattr(m, "check_text", lambda name, value: value)  # as if a field check had a gap
    word = _word("a\r\n" + injected, "q")
    for where in ("subject", "header"):
        with pytest.raises(HeaderInjection) as exc:
            _field(where, word).to_record(10**7)
        assert says in str(exc.value), (where, exc.value)
