"""Composing and parsing messages, and the record that goes on the queue.

Messages are built with the standard library's `email` package (policy
`email.policy.SMTP`, in stdemail.py); the record carries the final bytes, so
the daemon never composes again. The plainest message (ASCII headers, plain
addresses, a short-lined text body) is written here without importing the
package, byte for byte as the package would write it (`Email._plain`;
tests/test_quick.py holds the two to each other): `import mailmand` and one
`Client().enqueue(Email(...))` are a short process's whole life in a cron job.
"""

from __future__ import annotations

import re
import time

from .errors import HeaderInjection, InvalidAddress, InvalidMessage, MessageTooLarge
from .record import (  # noqa: F401 (re-exported: the record's home used to be here)
    CLOCK_SKEW,
    HORIZON,
    IDEMPOTENCY_NS,
    MAX_RECIPIENTS,
    PRIORITY_MAX,
    RECORD_ID,
    RECORD_VERSION,
    Record,
    _priority,
    check_recipients,
    check_send_after,
    new_id,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime, timedelta
    from email.headerregistry import Address
    from email.message import EmailMessage
    from pathlib import Path
    from typing import Any

    from .client import Client

# RFC 5322 §3.6.8: field-name = 1*ftext, printable US-ASCII except ":".
FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
# Headers that the keyword arguments own; setting them through `headers=`
# would duplicate or contradict them (and a Bcc header would leak).
OWNED_HEADERS = frozenset(
    h.lower()
    for h in ("From", "To", "Cc", "Bcc", "Reply-To", "Subject", "MIME-Version",
              "Content-Type", "Content-Transfer-Encoding", "Disposition-Notification-To")
)


# The boundaries of str.splitlines(): the email package folds a header at
# each of them, so any one inside a value could start a header of its own.
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _decoded(value: str) -> str:
    """The value as the email package will see it: RFC 2047 encoded words decoded."""
    from .stdemail import decoded

    return decoded(value)


def _no_crlf(name: str, value: str) -> str:
    if not LINE_BREAKS.isdisjoint(value):
        raise HeaderInjection(name, value, "a line break (CR, LF or another) is not allowed in a header value")
    # "=?utf-8?q?a=0D=0AX-Injected:_1?=" decodes to CR LF, which the stdlib
    # would re-fold into a header line of its own (a Bcc, a Reply-To...).
    if "=?" in value and not LINE_BREAKS.isdisjoint(_decoded(value)):  # imports the email package
        raise HeaderInjection(name, value, "an encoded word (RFC 2047) in it decodes to a line break")
    return value


def _idna(domain: str, name: str, original: object) -> str:
    """A Unicode domain in its ASCII (punycode) form, as SMTP and headers carry it."""
    if domain.isascii():
        return domain
    import idna

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidAddress(name, original, f"not a valid internationalized domain name ({exc})") from None


class _Part:
    def __init__(self, data: bytes, filename: str, maintype: str, subtype: str, cid: str | None = None) -> None:
        self.data = data
        self.filename = filename
        self.maintype = maintype
        self.subtype = subtype
        self.cid = cid


class Email:
    """A message to queue. Validates at once: bad input raises before anything is queued."""

    def __init__(
        self,
        sender: str | None = None,
        to: str | list[str] | None = None,
        cc: str | list[str] | None = None,
        bcc: str | list[str] | None = None,
        reply_to: str | list[str] | None = None,
        subject: str = "",
        text: str | None = None,
        html: str | None = None,
        headers: dict[str, str] | None = None,
        priority: int = 0,
        read_receipt: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        if not sender:
            raise InvalidMessage("sender", sender, "a sender is required")
        # Plain addresses are checked here; any other makes the email package parse them all.
        self._simple = _plain_addresses(sender=sender, to=to, cc=cc, bcc=bcc, reply_to=reply_to,
                                        read_receipt=read_receipt)
        self._real: dict[str, Any] | None = None
        if self._simple is None:
            from .stdemail import parse_address, parse_addresses

            self._real = {"sender": parse_address("sender", sender), "to": parse_addresses("to", to),
                          "cc": parse_addresses("cc", cc), "bcc": parse_addresses("bcc", bcc)}
            if not (self._real["to"] or self._real["cc"] or self._real["bcc"]):
                raise InvalidMessage("to", to, "at least one recipient (to, cc or bcc) is required")
            self._real["reply_to"] = parse_addresses("reply_to", reply_to)
        elif not (self._simple["to"] or self._simple["cc"] or self._simple["bcc"]):
            raise InvalidMessage("to", to, "at least one recipient (to, cc or bcc) is required")
        for field_name, value in (("subject", subject), ("text", text), ("html", html)):
            if value is not None and not isinstance(value, str):
                raise InvalidMessage(field_name, type(value).__name__, "expected a string")
        self.subject = _no_crlf("subject", subject or "")
        self.text = text
        self.html = html
        self.headers: dict[str, str] = {}
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        if not isinstance(priority, int) or isinstance(priority, bool) or not -PRIORITY_MAX <= priority <= PRIORITY_MAX:
            raise InvalidMessage("priority", priority, f"expected an integer from -{PRIORITY_MAX} to {PRIORITY_MAX}")
        self.priority = priority
        if self._real is not None:
            from .stdemail import parse_address

            self._real["read_receipt"] = parse_address("read_receipt", read_receipt) if read_receipt else None
        if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key):
            raise InvalidMessage("idempotency_key", idempotency_key, "expected a non-empty string")
        self.idempotency_key = idempotency_key
        self._parts: list[_Part] = []
        self._parsed: EmailMessage | None = None  # set by from_bytes
        # The envelope sender when it is not the From address: "" is the null
        # sender (`<>`) of a bounce, which nothing may answer.
        self.envelope_from: str | None = None

    # The addresses, as the email package's Address objects (made on first use
    # when they were all plain).

    def _addresses(self) -> dict[str, Any]:
        if self._real is None:
            from .stdemail import realize

            assert self._simple is not None
            self._real = realize(self._simple)
        return self._real

    @property
    def sender(self) -> Address:
        return self._addresses()["sender"]  # type: ignore[no-any-return]

    @property
    def to(self) -> list[Address]:
        return self._addresses()["to"]  # type: ignore[no-any-return]

    @property
    def cc(self) -> list[Address]:
        return self._addresses()["cc"]  # type: ignore[no-any-return]

    @property
    def bcc(self) -> list[Address]:
        return self._addresses()["bcc"]  # type: ignore[no-any-return]

    @property
    def reply_to(self) -> list[Address]:
        return self._addresses()["reply_to"]  # type: ignore[no-any-return]

    @property
    def read_receipt(self) -> Address | None:
        return self._addresses()["read_receipt"]  # type: ignore[no-any-return]

    def set_header(self, name: str, value: str) -> None:
        if not isinstance(name, str) or not FIELD_NAME.match(name):
            raise InvalidMessage("headers", name, "not a legal header name (RFC 5322 §3.6.8)")
        if name.lower() in OWNED_HEADERS:
            raise InvalidMessage("headers", name, "set this header through its own argument")
        if not isinstance(value, str):
            raise InvalidMessage(f"headers[{name}]", value, "expected a string")
        self.headers[name] = _no_crlf(f"headers[{name}]", value)

    # -- parts ---------------------------------------------------------------

    def attach(self, data: bytes | str, filename: str, mimetype: str | None = None) -> None:
        """Add an attachment; the type is guessed from the filename when omitted."""
        self._parts.append(_Part(_as_bytes(data), _filename(filename), *_mime(filename, mimetype)))

    def attach_file(self, path: str | Path, mimetype: str | None = None, filename: str | None = None) -> None:
        from pathlib import Path

        p = Path(path)
        if not p.is_file():
            raise InvalidMessage("attachment", str(path), "no such file")
        self.attach(p.read_bytes(), filename or p.name, mimetype)

    def embed(self, data: bytes, filename: str, mimetype: str | None = None) -> str:
        """Add an inline part and return its Content-ID, for `<img src="cid:...">`."""
        from email.utils import make_msgid

        cid = make_msgid(domain=self.sender.domain)[1:-1]
        self._parts.append(_Part(_as_bytes(data), _filename(filename), *_mime(filename, mimetype), cid=cid))
        return cid

    # -- building ------------------------------------------------------------

    @property
    def envelope_recipients(self) -> tuple[str, ...]:
        if self._real is None and self._simple is not None:
            return tuple(dict.fromkeys(f"{local}@{domain}" for name in ("to", "cc", "bcc")
                                       for _, local, domain in self._simple[name]))
        seen: dict[str, None] = {}
        for a in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(a.addr_spec, None)
        return tuple(seen)

    def build(self) -> EmailMessage:
        """The message as it will be sent (no Bcc header, ever)."""
        if self._parsed is not None:
            return self._parsed
        from .stdemail import build

        return build(self)

    def to_record(self, max_size: int, send_after: float = 0.0, max_recipients: int = MAX_RECIPIENTS) -> Record:
        rcpt = self.envelope_recipients
        check_recipients(len(rcpt), max_recipients, "to")
        check_send_after(send_after, time.time(), "send_after")
        plain = self._plain()
        if plain is not None:
            raw, subject = plain, self.subject
        else:
            from .stdemail import SMTP_UTF8_POLICY, no_new_headers

            msg = self.build()
            try:
                raw = msg.as_bytes()
            except UnicodeEncodeError:
                if not all(a.isascii() for a in rcpt) or not self.sender.username.isascii():
                    raw = msg.as_bytes(policy=SMTP_UTF8_POLICY)  # SMTPUTF8 mail: UTF-8 headers (RFC 6532)
                else:
                    raise InvalidMessage("headers", None, "a header holds text that cannot be encoded "
                                         "(non-ASCII where only ASCII may go)") from None
            if self._parsed is None and self._given_encoded_words():
                no_new_headers(raw, self.headers)
            found = msg.get("Subject")
            subject = "" if found is None else str(found)
        if len(raw) > max_size:
            raise MessageTooLarge(
                "message", f"{len(raw)} bytes",
                f"{len(raw)} bytes as encoded for sending, over max-message-size ({max_size} bytes); "
                "attachments grow by about a third in transfer encoding (base64)")
        return Record(
            id=new_id(self.idempotency_key),
            mail_from=self._sender_spec() if self.envelope_from is None else self.envelope_from,
            rcpt_to=rcpt,
            raw=raw,
            priority=self.priority,
            send_after=send_after,
            idempotency_key=self.idempotency_key,
            subject=subject,
        )

    def _sender_spec(self) -> str:
        if self._real is None and self._simple is not None:
            _, local, domain = self._simple["sender"][0]
            return f"{local}@{domain}"
        return str(self.sender.addr_spec)

    def _plain(self) -> bytes | None:
        """The message as the email package writes it, for the plainest kind:
        plain addresses, a subject and X- headers of printable ASCII that fit on
        a line, a text body whose lines fit (7bit or 8bit), nothing else. None
        for any other: `build()` makes it."""
        simple = self._simple
        if (simple is None or self._parsed is not None or self._parts or self.html is not None
                or simple["read_receipt"] or not _plain_text("Subject", self.subject)
                or not all(name[:2].lower() == "x-" and _plain_text(name, value)
                           for name, value in self.headers.items())):
            return None
        body = (self.text or "").encode("utf-8").splitlines()  # a lone surrogate raises as set_content does
        if any(len(line) > MAX_LINE for line in body):
            return None  # quoted-printable or base64: the email package's choice
        lines = [_address_line("From", simple["sender"])]
        for name, field in (("To", "to"), ("Cc", "cc"), ("Reply-To", "reply_to")):
            if simple[field]:
                lines.append(_address_line(name, simple[field]))
        if not all(len(line) <= MAX_LINE for line in lines):
            return None  # folded by the email package
        from .quick import formatdate, msgid

        now = time.time()
        lines += [_text_line("Subject", self.subject), f"Date: {formatdate(now)}",
                  f"Message-ID: {msgid(simple['sender'][0][2], now)}",
                  *(_text_line(name, value) for name, value in self.headers.items()),
                  'Content-Type: text/plain; charset="utf-8"',
                  f"Content-Transfer-Encoding: {'7bit' if all(line.isascii() for line in body) else '8bit'}",
                  "MIME-Version: 1.0", "", ""]
        return "\r\n".join(lines).encode("ascii") + b"\r\n".join(body) + b"\r\n"

    def _given_encoded_words(self) -> bool:
        """Did the caller hand us anything that looks like an RFC 2047 word?"""
        values = [self.subject, *self.headers.values(), *(p.filename for p in self._parts),
                  *(a.display_name for a in (self.sender, *self.to, *self.cc, *self.reply_to))]
        return any("=?" in v for v in values)

    # -- parsing -------------------------------------------------------------

    @classmethod
    def from_bytes(cls, raw: bytes, *, sender: str | None = None, recipients: Sequence[str] | None = None,
                   extra_recipients: Sequence[str] = (), from_name: str | None = None,
                   default_sender: str | None = None, local_domain: str | None = None,
                   aliases: Mapping[str, Sequence[str]] | None = None, priority: int = 0,
                   idempotency_key: str | None = None) -> Email:
        """Parse an RFC 5322 message (or, with no header at all, take the whole
        input as the body). The envelope sender is `sender` (`<>`: the null
        sender), else the From header, else `default_sender`; the recipients
        are `recipients`, else the To, Cc and Bcc headers plus
        `extra_recipients`. A bare name (`root`, as cron writes) goes through
        `aliases` (`default` catches every name), else gets `@local_domain`,
        in the envelope and in the From/To/Cc headers alike. The Bcc header is
        always removed."""
        from .inbound import parse_message

        return parse_message(cls, raw, sender=sender, recipients=recipients, extra_recipients=extra_recipients,
                             from_name=from_name, default_sender=default_sender, local_domain=local_domain,
                             aliases=aliases or {}, priority=priority, idempotency_key=idempotency_key)

    # -- queueing through the default client --------------------------------

    def enqueue(self, client: Client | None = None) -> str:
        return (client or _default_client()).enqueue(self)

    def send_later(self, delay: str | float | timedelta, client: Client | None = None) -> str:
        return (client or _default_client()).send_later(self, delay)

    def send_at(self, when: datetime, client: Client | None = None) -> str:
        return (client or _default_client()).send_at(self, when)

    def __repr__(self) -> str:
        return f"Email(sender={str(self.sender)!r}, to={self.envelope_recipients!r}, subject={self.subject!r})"


# What a composed message's headers may be: the arguments' headers, and the
# MIME headers the email package writes. Anything else came from an injection.
COMPOSED_HEADERS = frozenset(h.lower() for h in (
    *OWNED_HEADERS, "Date", "Message-ID", "Content-Disposition", "Content-ID"))


def _default_client() -> Client:
    from .client import default_client

    return default_client()


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _filename(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidMessage("filename", name, "a filename is required")
    return _no_crlf("filename", name)


def _mime(filename: str, mimetype: str | None) -> tuple[str, str]:
    if not mimetype:
        import mimetypes  # here: it reads the system's type maps, which only attachments need

        mimetype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    maintype, _, subtype = mimetype.partition("/")
    if not maintype or not subtype or "\n" in mimetype or "\r" in mimetype:
        raise InvalidMessage("mimetype", mimetype, "expected type/subtype")
    return maintype, subtype


# -- plain messages, without the email package ---------------------------------

MAX_LINE = 78  # policy.SMTP's max_line_length: longer lines are folded or encoded (RFC 5322 §2.1.1)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# `local@domain` or `Name Words <local@domain>`: ASCII, a dot-atom local part, a domain of
# letters, digits and hyphens, a display name of atoms separated by single spaces.
_PLAIN_ADDRESS = re.compile(rf"(?:({_ATEXT}(?: {_ATEXT})*) <)?"
                            rf"({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?(1)>)")
_PLAIN_TEXT = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")


def _plain_address(value: object, single: bool) -> list[tuple[str, str, str]] | None:
    """(display name, local part, domain) of each address in `value` (a string,
    comma-separated, or a list of them), when every one is plain; else None."""
    items = [value] if isinstance(value, str) else value if isinstance(value, list | tuple) else None
    if items is None:
        return None
    found = []
    for item in items:
        if not isinstance(item, str) or "=?" in item:
            return None
        parts = [item] if single else item.split(",")
        for part in parts:
            m = _PLAIN_ADDRESS.fullmatch(part.strip(" "))
            if m is None:
                return None
            found.append((m.group(1) or "", m.group(2), m.group(3)))
    return found


def _plain_addresses(**fields: object) -> dict[str, list[tuple[str, str, str]]] | None:
    out: dict[str, list[tuple[str, str, str]]] = {}
    for name, value in fields.items():
        if value is None or (name != "sender" and value == []):
            out[name] = []
            continue
        found = _plain_address(value, single=name in ("sender", "read_receipt"))
        if found is None:
            return None
        out[name] = found
    return out


def _address_line(name: str, addresses: list[tuple[str, str, str]]) -> str:
    return f"{name}: " + ", ".join(f"{d} <{u}@{h}>" if d else f"{u}@{h}" for d, u, h in addresses)


def _text_line(name: str, value: str) -> str:
    return f"{name}: {value}" if value else f"{name}:"  # as the email package writes an empty value


def _plain_text(name: str, value: str) -> bool:
    return value == "" or (_PLAIN_TEXT.fullmatch(value) is not None and "=?" not in value
                           and len(name) + 2 + len(value) <= MAX_LINE)


# Names that lived here before stdemail.py: imported from there on first use.
_STDEMAIL = {"SMTP_POLICY", "SMTP_UTF8_POLICY", "parse_address", "parse_addresses", "header_subject", "_address",
             "_HeaderRegistry"}


def __getattr__(name: str) -> Any:
    if name in _STDEMAIL:
        from . import stdemail

        return getattr(stdemail, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
