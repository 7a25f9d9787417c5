"""The common sendmail message, queued without the `email` package.

`mailmand-sendmail -t` runs once per message, and importing the standard
library's `email` package (with the `socket`, `urllib`, `calendar` and
`random` it pulls in) is most of what is left of its start-up. Most messages
that scripts hand to sendmail are plain: ASCII headers, each on a line or
folded, addresses written `local@domain` or `Name <local@domain>`, a From
header, a single-part body. For those, what the email package does is
predictable: it keeps each header line as written (with one space after the
colon), drops Bcc, adds Message-ID and Date when missing, and ends every line
with CRLF. `record()` does exactly that, or returns None as soon as anything
is outside that shape, and the caller takes the full path
(`Email.from_bytes`), which also says what is wrong with a bad message. It
never refuses a message itself.

tests/test_quick.py holds it to the email package's output, byte for byte,
over a corpus of messages that either path may take.
"""

from __future__ import annotations

import os
import re
import time

from .record import Record, new_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_LINE = 78  # policy.SMTP's max_line_length: a longer header line is refolded (RFC 5322 §2.1.1)
# An RFC 5322 header line: a field name (printable ASCII but ":"), a colon, a value.
_HEADER = re.compile(rb"([\x21-\x39\x3b-\x7e]+):(.*)")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_QUOTED = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'
_PHRASE = rf"(?:{_ATEXT}|{_QUOTED})(?:[ \t]+(?:{_ATEXT}|{_QUOTED}))*"
# One address: `local@domain` or `Name <local@domain>` (the spec in group 1 or 2).
_ADDRESS = rf"[ \t]*(?:({_ADDR_SPEC})|{_PHRASE}[ \t]*<({_ADDR_SPEC})>)[ \t]*"
_ADDRESS_ONE = re.compile(_ADDRESS)
# Headers the full path parses as address lists (and would rewrite a bare name in).
ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender"})
# A single-part body: the generator writes it back as it came (line ends aside).
_DISCRETE = re.compile(r"[ \t]*([A-Za-z0-9!#$%&'*+.^_`|~-]+)/[A-Za-z0-9!#$%&'*+.^_`|~-]+[ \t]*(?:;.*)?",
                       re.DOTALL)
_EOL = re.compile(rb"\r\n|\r|\n")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def record(raw: bytes, *, sender: str | None, recipients: Sequence[str] | None, extra_recipients: Sequence[str],
           max_size: int, max_recipients: int, now: float | None = None) -> Record | None:
    """The record `Email.from_bytes(raw, sender=..., recipients=..., extra_recipients=...)
    .to_record(max_size, 0, max_recipients)` makes (with `from_name`, `default_sender`,
    `local_domain` and `aliases` unused, as they are for such a message), or None."""
    split = _split(raw)
    if split is None:
        return None
    headers, body = split
    names = [name.lower() for name, _ in headers]
    values: dict[str, list[str]] = {}
    for (_, value), low in zip(headers, names, strict=True):
        values.setdefault(low, []).append(value)
    addresses: dict[str, list[str]] = {}
    for low in ADDRESS_HEADERS:
        found = []
        for value in values.get(low, ()):
            specs = _specs(_unfold(value))
            if specs is None:
                return None
            found += specs
        addresses[low] = found
    for value in values.get("content-type", ()):
        m = _DISCRETE.fullmatch(_unfold(value))
        if m is None or m.group(1).lower() in ("multipart", "message"):
            return None

    if not addresses["from"]:
        return None  # no From header: the full path writes one
    null_sender = sender is not None and sender.strip() in ("", "<>")
    if sender and not null_sender:
        given = _specs(sender, single=True)
        if given is None:
            return None
        envelope_from = given[0]
    else:
        envelope_from = addresses["from"][0]
    given_rcpt: list[str] = []
    for arg in recipients or extra_recipients:
        specs = _specs(arg)
        if specs is None:
            return None
        given_rcpt += specs
    rcpt = given_rcpt if recipients else [*addresses["to"], *addresses["cc"], *addresses["bcc"], *given_rcpt]
    rcpt_to = tuple(dict.fromkeys(rcpt))
    if not rcpt_to or len(rcpt_to) > max_recipients:
        return None  # the full path says what is wrong

    now = time.time() if now is None else now
    lines = [b"%s: %s\r\n" % (name.encode(), value.encode().replace(b"\n", b"\r\n"))
             for (name, value), low in zip(headers, names, strict=True) if low != "bcc"]
    if "message-id" not in values:
        domain = envelope_from.rpartition("@")[2]
        lines.append(b"Message-ID: %s\r\n" % msgid(domain, now).encode())
    if "date" not in values:
        lines.append(b"Date: %s\r\n" % formatdate(now).encode())
    lines.append(b"\r\n")
    lines.append(_EOL.sub(b"\r\n", body))
    out = b"".join(lines)
    if len(out) > max_size:
        return None
    subject = values.get("subject")
    return Record(id=new_id(), mail_from="" if null_sender else envelope_from, rcpt_to=rcpt_to, raw=out,
                  subject="" if subject is None else _unfold(subject[0]))


def _split(raw: bytes) -> tuple[list[tuple[str, str]], bytes] | None:
    """The head as (name, value) pairs, the value as the email package keeps it
    (spaces after the colon dropped, folded lines joined with LF), and the body."""
    if not isinstance(raw, bytes) or raw.startswith(b"From "):
        return None
    end = raw.find(b"\n\n")
    crlf = raw.find(b"\r\n\r\n")
    if crlf >= 0 and (end < 0 or crlf < end):
        head, body = raw[:crlf], raw[crlf + 4:]
        lines = head.split(b"\r\n")
    elif end >= 0:
        head, body = raw[:end], raw[end + 2:]
        lines = head.split(b"\n")
    else:
        return None
    if not head.isascii() or b"\r" in b"".join(lines) or b"=?" in head:
        return None
    headers: list[tuple[str, str]] = []
    for line in lines:
        if any(c < 0x20 and c != 0x09 or c == 0x7f for c in line):
            return None  # controls: str.splitlines would fold at some of them
        if line[:1] in (b" ", b"\t"):
            if not headers or not line.strip():
                return None
            name, value = headers[-1]
            if len(line) > MAX_LINE:
                return None
            headers[-1] = (name, f"{value}\n{line.decode()}")
            continue
        m = _HEADER.fullmatch(line)
        if m is None:
            return None
        name, value = m.group(1).decode(), m.group(2).decode().lstrip(" \t")
        if len(name) + 2 + len(value) > MAX_LINE:
            return None  # refolded by the email package
        headers.append((name, value))
    if not headers:
        return None
    return headers, body


def _unfold(value: str) -> str:
    return value.replace("\n", "")


def _specs(value: str, single: bool = False) -> list[str] | None:
    """The addr-specs of a comma-separated list of simple addresses (of one, when `single`), or None."""
    specs, pos = [], 0
    while True:
        m = _ADDRESS_ONE.match(value, pos)
        if m is None:
            return None
        specs.append(m.group(1) or m.group(2))
        pos = m.end()
        if pos == len(value):
            return specs
        if value[pos] != "," or single:
            return None
        pos += 1


def msgid(domain: str, now: float) -> str:
    """email.utils.make_msgid(domain=domain), with os.urandom for `random.getrandbits(64)`."""
    return f"<{int(now * 100)}.{os.getpid()}.{int.from_bytes(os.urandom(8), 'big')}@{domain}>"


def formatdate(now: float) -> str:
    """email.utils.formatdate(now, localtime=True): RFC 5322 §3.3, local time and offset."""
    t = time.localtime(now)
    offset = t.tm_gmtoff // 60
    hours, minutes = divmod(abs(offset), 60)
    zone = f"{'-' if offset < 0 else '+'}{hours:02d}{minutes:02d}"
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {zone}")
