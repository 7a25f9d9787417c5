"""The producers' fast paths held to the full ones.

A raw message (sendmail, `send FILE`, the listener, Django) goes out as it came
in: over a corpus of what scripts write, every field keeps its bytes and its
place, and only what must change changes (Bcc dropped; Message-ID, Date, From
added at the end; a bare name or non-ASCII text written anew). The usual ones
are taken without importing the `email` package. And `Email(...)` written
without the package (message.py's `_plain`) is byte for byte what the package
writes. Start-up figures are bench/startup.py's."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from email import policy
from email.message import EmailMessage
from email.utils import formatdate

import pytest

from mailmand.errors import InvalidMessage, MessageTooLarge
from mailmand.headers import ADDRESS_FIELDS, msgid
from mailmand.headers import formatdate as quick_formatdate
from mailmand.message import Email
from mailmand.raw import RawMessage
from mailmand.stdemail import SMTP_POLICY
from tests.conftest import ROOT

FROMS = ["From: cron@example.com", "From: Cron Daemon <cron@example.com>", 'From: "Daemon, Cron" <cron@example.com>',
         "From: root (Cron Daemon)", "From: root", "From: <cron@example.com>", "From: cron@example.com\n\t",
         "FROM: cron@sub.example.com", "From: a.b+c@example.com", "From: o'neil#x{y}@example.com",
         "From: cron@EXAMPLE.com ", "From: Ann Lee <ann@example.com>, bob@example.com", "From: \"\" <a@example.com>",
         "From: cron@localhost", "From: =?utf-8?q?Cr=C3=B6n?= <cron@example.com>", "From: Crön <cron@example.com>",
         "From: cron@exämple.com", "From: cron@-example.com", "From: a@b@example.com", "From: <>",
         "From: cron@[127.0.0.1]", "From: J. Smith <j@example.com>", "From: cron@example.com.", ""]
TOS = ["To: ops@example.com", "To: ops@example.com, dev@example.com",
       "To: Ops <ops@example.com>,\n Dev <dev@example.com>",
       "To: ops@example.com,,dev@example.com", "To: undisclosed-recipients:;", "To: root", "To: ops@example.com\nCc: "
       "ops@example.com, qa@example.com", "To: ops@example.com\nBcc: hidden@example.com", "to: OPS@example.com",
       "To: ops@example.com\nTo: dev@example.com", "To:ops@example.com", "To:   ops@example.com\t",
       "To: a-very-long-address-that-makes-the-line-long@a-long-domain-name.example.com, x@example.com",
       "Bcc: only@example.com", "To: ops@example.com\r", ""]
SUBJECTS = ["Subject: hello", "Subject:   spaced  out\t ", "Subject: folded\n  over two lines", "Subject:",
            "Subject: =?utf-8?q?caf=C3=A9?=", "Subject: café", "Subject: " + "x" * 80, "Subject: a\x0bb",
            "Subject: one\nSubject: two", "Subject: (not a comment) <not@address>", ""]
EXTRAS = ["", "Content-Type: text/plain; charset=utf-8", "Content-Type: text/html;\n charset=\"UTF-8\"",
          "Content-Type: multipart/mixed; boundary=x", "Content-Type: message/rfc822", "Content-Type: bogus",
          "Message-ID: <given@example.com>", "Date: Mon, 1 Jan 2024 00:00:00 +0000", "Message-Id: <x@y>",
          "X-PHP-Originating-Script: 33:mail.php", "X-Odd-Name_1.2: v", ": no name", "not a header",
          "X-Mailer: PHP/8.2\nMIME-Version: 1.0\nContent-Transfer-Encoding: 8bit", " leading continuation",
          "X-Empty:", "X-Long: " + "y" * 75]
BODIES = [b"hello\n", b"line one\nline two\n", b"crlf\r\nlines\r\n", b"lone\rcr\n", b"caf\xc3\xa9 \xff\n", b"",
          b"no newline at end", b"--x\nContent-Type: text/plain\n\npart\n--x--\n", b"\n\nblank lines\n\n"]
ARGS = [dict(t=True, f=None, args=[]), dict(t=True, f="bounce@example.com", args=[]), dict(t=True, f="<>", args=[]),
        dict(t=True, f=None, args=["extra@example.com"]), dict(t=False, f=None, args=["ops@example.com"]),
        dict(t=False, f="Ann <ann@example.com>", args=["a@example.com, b@example.com"]),
        dict(t=False, f=None, args=["root"]), dict(t=True, f="a@b@c", args=[])]

MSGID = re.compile(rb"^Message-ID: <\d+\.\d+\.\d+@[^>\r\n]+>\r\n", re.M)
DATE = re.compile(rb"^Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                  rb"\d{4} \d\d:\d\d:\d\d [+-]\d{4}\r\n", re.M)


BOUNDARY = re.compile(rb"={15}\d+==")  # the email package's random MIME boundary


def normal(raw: bytes) -> bytes:
    return BOUNDARY.sub(b"=-=", DATE.sub(b"Date: -\r\n", MSGID.sub(b"Message-ID: -\r\n", raw)))


def cases():
    for head in itertools.product(FROMS, TOS, SUBJECTS[:3], EXTRAS[:2]):
        yield head, BODIES[0], ARGS[0], "\n"
    for i, (extra, body, args, eol) in enumerate(itertools.product(EXTRAS, BODIES, ARGS, ["\n", "\r\n"])):
        yield (FROMS[i % len(FROMS)], TOS[i % len(TOS)], SUBJECTS[i % len(SUBJECTS)], extra), body, args, eol
    for subject, body in itertools.product(SUBJECTS, BODIES):
        yield (FROMS[0], TOS[0], subject, ""), body, ARGS[0], "\n"


def fields(head: bytes) -> list[tuple[str, bytes]] | None:
    """(name, the field's CRLF lines) of a head, read independently of mailmand; None when a
    line is neither a field nor a continuation (where readers differ)."""
    out: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + line + b"\r\n")
        elif re.fullmatch(rb"[\x21-\x39\x3b-\x7e]+:.*", line, re.S):
            out.append((line.split(b":")[0].decode(), line + b"\r\n"))
        else:
            return None
    return out


def written_anew(name: str, lines: bytes) -> bool:
    """A field mailmand must write anew: non-ASCII, or an address field naming a bare name."""
    if not lines.isascii():
        return True
    if name.lower() not in ADDRESS_FIELDS:
        return False
    value = lines.decode().split(":", 1)[1].replace("\r\n", "")
    header = policy.SMTP.header_factory("To", value)
    return any(not a.domain for a in header.addresses)  # type: ignore[attr-defined]


def test_a_raw_message_goes_out_as_it_came_in():
    taken = compared = refused = 0
    for head, body, args, eol in cases():
        raw = "\n".join(line for line in head if line).replace("\n", eol).encode("utf-8") + eol.encode() * 2 + body
        try:
            got = RawMessage.parse(raw, sender=args["f"], recipients=None if args["t"] else args["args"],
                                   extra_recipients=args["args"] if args["t"] else (), default_sender="cron",
                                   local_domain="host.example").to_record(10_000, 0.0, 1000)
        except InvalidMessage:  # refused with a sentence; any other exception is a bug and fails here
            refused += 1
            continue
        taken += 1
        given_head, _, given_body = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").partition(b"\r\n\r\n")
        given = fields(given_head)
        out_head, _, out_body = got.raw.partition(b"\r\n\r\n")
        out = fields(out_head)
        assert out is not None, got.raw
        if given is None:
            continue  # the head ended early at a line that is not a field: the rest is body
        compared += 1
        kept = [(n, lines) for n, lines in given if n.lower() != "bcc"]
        assert [n for n, _ in out[:len(kept)]] == [n for n, _ in kept], (raw, got.raw)
        for (name, lines), (_, sent) in zip(kept, out, strict=False):
            assert sent == lines or written_anew(name, lines), (raw, got.raw)  # byte for byte
        added = [n for n, _ in out[len(kept):]]
        names = {n.lower() for n, _ in given}
        assert added == [n for n in ("From", "Message-ID", "Date") if n.lower() not in names], (raw, got.raw)
        assert out_body == given_body.replace(b"\r", b"\r\n").replace(b"\r\n\n", b"\r\n"), raw
    assert taken > 1000 and refused > 500 and compared > 1000, (taken, refused, compared)  # the check can fail


# What PHP's mail() and cron write: taken without the email package.
USUAL = [
    b"From: app@example.com\nTo: user@example.com\nSubject: Your order\nMIME-Version: 1.0\n"
    b"Content-Type: text/html; charset=UTF-8\nX-Mailer: PHP/8.2\n\n<p>Thanks</p>\n",
    b"From: Cron Daemon <cron@example.com>\nTo: ops@example.com,\n dev@example.com\nSubject: startup\n\nhello\n",
    b'From: "Daemon, Cron" <cron@example.com>\nTo: ops@example.com\nBcc: audit@example.com\n\nhi\n',
]


@pytest.mark.parametrize("raw", USUAL)
def test_the_usual_messages_need_no_email_package(raw):
    code = ("import sys\nfrom mailmand.raw import RawMessage\n"
            "r = RawMessage.parse(sys.stdin.buffer.read()).to_record(10_000)\n"
            "assert r.rcpt_to, r\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('email', 'socket')))")
    out = subprocess.run([sys.executable, "-c", code], input=raw, capture_output=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "[]"


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kolkata", "Pacific/Chatham"])
def test_its_date_is_formatdates(tz, monkeypatch):
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        for t in (0, 1_700_000_000, 1_719_792_000.5, 1_735_689_599, 2_000_000_000):
            assert quick_formatdate(t) == formatdate(t, localtime=True)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_its_message_id_is_make_msgids_form():
    mid = msgid("example.com", 1_700_000_000.123)
    assert re.fullmatch(rf"<170000000012\.{os.getpid()}\.\d+@example\.com>", mid)
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["Message-ID"] = mid
    assert msg.as_bytes().startswith(f"Message-ID: {mid}\r\n".encode())


# -- Email(...) composed without the email package (message.py's `_plain`) ----------------

SENDERS = ["app@example.com", "App <app@example.com>", "Ann Lee <ann.lee@example.com>", "a+b@sub.example.org",
           '"Lee, Ann" <ann@example.com>', "ann@example.com, bob@example.com", "  app@example.com ",
           "=?utf-8?q?App?= <app@example.com>", "Ann  Lee <ann@example.com>", "ann@exämple.com", "ann@-x.com",
           "app@localhost", "<app@example.com>", "ann", "ann@", "Ann <ann@example.com", "Ännä <ann@example.com>"]
RCPTS = [None, "ops@example.com", ["ops@example.com", "dev@example.com"], "ops@example.com, dev@example.com",
         ("ops@example.com",), "Ops Team <ops@example.com>", [], "", "ops@example.com,", ["ops@example.com", 3],
         "ops@example.com\nBcc: x@example.com", ", ".join(f"user{i}@example.com" for i in range(8))]
TEXTS = [None, "", "hello\n", "hi", "line\r\nline\rline\n", "café\n", "x" * 78, "x" * 79, "\x00\x0b\x0c\n", "\ud800"]
SUBJECTS_ = ["", "Hello", "Hello  world", " lead", "trail ", "café", "=?utf-8?q?x?=", "x" * 69, "x" * 70,
             "tab\there", "a\nb"]
HEADERS = [None, {"X-Campaign": "welcome"}, {"X-Long": "y" * 66}, {"X-Empty": ""}, {"List-Id": "<l.example.com>"},
           {"X-Enc": "=?utf-8?q?x?="}, {"Message-ID": "<mine@example.com>"}]
MORE = [{}, {"html": "<p>x</p>"}, {"reply_to": "replies@example.com"}, {"read_receipt": "app@example.com"},
        {"cc": "cc@example.com", "bcc": ["b1@example.com", "b2@example.com"]}, {"priority": 5},
        {"idempotency_key": "k1"}, {"reply_to": "Bad <"}]


def compose_cases():
    for sender, to, text in itertools.product(SENDERS, RCPTS, TEXTS[:4]):
        yield {"sender": sender, "to": to, "text": text}
    for i, (subject, headers, more) in enumerate(itertools.product(SUBJECTS_, HEADERS, MORE)):
        yield {"sender": SENDERS[i % 4], "to": RCPTS[1 + i % 5], "subject": subject, "headers": headers,
               "text": TEXTS[i % len(TEXTS)], **more}


def made(kwargs: dict, full: bool, monkeypatch):
    from mailmand import headers

    with monkeypatch.context() as m:
        if full:
            m.setattr(headers, "plain_addresses", lambda value, single=False: None)
            m.setattr(Email, "_plain", lambda self: None)
        try:
            email = Email(**kwargs)
            return email, email.to_record(10_000, 0.0, 5)
        except Exception as exc:  # noqa: BLE001 (compared below: the same error either way)
            return exc, None


def test_a_plain_email_is_written_as_the_email_package_writes_it(monkeypatch):
    plain = total = 0
    for kwargs in compose_cases():
        total += 1
        quick_email, got = made(kwargs, False, monkeypatch)
        full_email, want = made(kwargs, True, monkeypatch)
        if isinstance(full_email, Exception) or isinstance(quick_email, Exception):
            assert type(quick_email) is type(full_email) and str(quick_email) == str(full_email), kwargs
            continue
        assert (quick_email.sender, quick_email.to, quick_email.cc, quick_email.bcc, quick_email.reply_to,
                quick_email.read_receipt) == (full_email.sender, full_email.to, full_email.cc, full_email.bcc,
                                              full_email.reply_to, full_email.read_receipt), kwargs
        if isinstance(want, MessageTooLarge) or want is None:
            continue
        plain += quick_email._plain() is not None
        assert (got.mail_from, got.rcpt_to, got.subject, got.priority, got.idempotency_key) == (
            want.mail_from, want.rcpt_to, want.subject, want.priority, want.idempotency_key), kwargs
        assert normal(got.raw) == normal(want.raw), (kwargs, got.raw, want.raw)
    assert total > 1000
    assert plain > 150, f"only {plain} of {total} written without the email package"  # the check can fail


def test_a_plain_head_is_split_as_the_line_by_line_reading_splits_it(monkeypatch):
    """headers.split_head reads a head of printable ASCII in CRLF lines with two regular
    expressions (ingest's and sendmail's common case): the same fields, the same body offset
    and the same refusals as its line-by-line reading of any other head."""
    import re as re_

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from mailmand import headers

    def split(data: bytes) -> object:
        try:
            return headers.split_head(data)
        except InvalidMessage as exc:
            return str(exc)

    line = st.one_of(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=20),
                     st.sampled_from(["\t", "x" * 990, "y" * 1000, "é", "a\rb"]))
    field = st.tuples(st.sampled_from(["Subject", "X-A", "To", "", "Bad Name", " ", "\t"]), line,
                      st.lists(st.tuples(st.sampled_from([" ", "\t"]), line), max_size=2))

    @settings(max_examples=400, deadline=None)
    @given(fields=st.lists(field, max_size=5), body=st.sampled_from([b"", b"body\r\n", b"\r\n\r\nx"]))
    def check(fields, body):
        text = "".join(f"{n}:{v}\r\n" + "".join(w + c + "\r\n" for w, c in folds) for n, v, folds in fields)
        data = text.encode() + b"\r\n" + body
        fast = split(data)
        with monkeypatch.context() as m:
            m.setattr(headers, "_PLAIN_HEAD", re_.compile(rb"(?!)"))  # never matches: line by line
            assert split(data) == fast, data

    check()
