"""Composing and parsing messages, and the record that goes on the queue.

Everything is built with the standard library's `email` package (policy
`email.policy.SMTP`); the record carries the final bytes, so the daemon never
composes again.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import errors, headerregistry, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formataddr, formatdate, getaddresses, make_msgid, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import HeaderInjection, InvalidAddress, InvalidMessage, MessageTooLarge

if TYPE_CHECKING:
    from .client import Client

RECORD_VERSION = 1
PRIORITY_MAX = 1_000_000  # higher goes first; bounded so every store can hold it
# RFC 5322 §3.6.8: field-name = 1*ftext, printable US-ASCII except ":".
FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
# Headers that the keyword arguments own; setting them through `headers=`
# would duplicate or contradict them (and a Bcc header would leak).
OWNED_HEADERS = frozenset(
    h.lower()
    for h in ("From", "To", "Cc", "Bcc", "Reply-To", "Subject", "MIME-Version",
              "Content-Type", "Content-Transfer-Encoding", "Disposition-Notification-To")
)


class _HeaderRegistry(headerregistry.HeaderRegistry):
    """The stdlib registry builds a new header class on every lookup (~8 µs,
    17 lookups a message): build each once. Same classes, same output."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        cls = self._made.get(name)
        if cls is None:
            cls = self._made[name] = super().__getitem__(name)
        return cls


SMTP_POLICY = policy.SMTP.clone(header_factory=_HeaderRegistry())
# uuid5 namespace for idempotency keys: the same key always gives the same id,
# so a producer learns the first message's id without asking the daemon.
IDEMPOTENCY_NS = uuid.UUID("6f1c9d0e-5b7a-4f3e-9a51-3c1f6d2b8e40")


def new_id(idempotency_key: str | None = None) -> str:
    if idempotency_key is not None:
        return uuid.uuid5(IDEMPOTENCY_NS, idempotency_key).hex
    return uuid.uuid4().hex


def _no_crlf(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise HeaderInjection(name, value, "CR or LF is not allowed in a header value")
    return value


def _address(name: str, display: str, spec: str, original: object) -> Address:
    local, at, domain = spec.rpartition("@")
    if not at or not local or not domain or " " in spec or domain.startswith(".") or ".." in domain:
        raise InvalidAddress(name, original, "not a valid email address")
    if not spec.isascii():
        raise InvalidAddress(name, original, "non-ASCII addresses (SMTPUTF8) are not supported")
    try:
        return Address(display_name=display, addr_spec=spec)
    except (ValueError, IndexError, errors.HeaderParseError) as exc:
        raise InvalidAddress(name, original, f"not a valid email address ({exc})") from None


def parse_address(name: str, value: object) -> Address:
    """One address, `Name <local@domain>` or `local@domain`, or InvalidAddress."""
    if not isinstance(value, str):
        raise InvalidAddress(name, value, "expected a string")
    display, spec = parseaddr(_no_crlf(name, value))
    return _address(name, display, spec, value)


def parse_addresses(name: str, value: str | Sequence[str] | None) -> list[Address]:
    """A string (which may hold a comma-separated list) or a list of them."""
    if value is None:
        return []
    out: list[Address] = []
    for item in [value] if isinstance(value, str) else list(value):
        if not isinstance(item, str):
            raise InvalidAddress(name, item, "expected a string")
        pairs = getaddresses([_no_crlf(name, item)])
        if not pairs:
            raise InvalidAddress(name, item, "not a valid email address")
        out.extend(_address(name, display, spec, item) for display, spec in pairs)
    return out


@dataclass(frozen=True)
class Record:
    """What travels on the queue: JSON, never pickle. `raw` is the final message."""

    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    raw: bytes
    priority: int = 0
    send_after: float = 0.0  # epoch seconds; 0 or past = now
    idempotency_key: str | None = None
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "id": self.id,
            "mail_from": self.mail_from,
            "rcpt_to": list(self.rcpt_to),
            "raw": base64.b64encode(self.raw).decode("ascii"),
            "priority": self.priority,
            "send_after": self.send_after,
            "idempotency_key": self.idempotency_key,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: object) -> Record:
        """Validate a decoded spool item; InvalidMessage names what is wrong."""
        if not isinstance(data, dict):
            raise InvalidMessage("record", type(data).__name__, "expected a JSON object")
        if data.get("v") != RECORD_VERSION:
            raise InvalidMessage("record.v", data.get("v"), f"unsupported record version (want {RECORD_VERSION})")
        try:
            rcpt = data["rcpt_to"]
            if not isinstance(rcpt, list) or not rcpt or not all(isinstance(r, str) for r in rcpt):
                raise InvalidMessage("record.rcpt_to", rcpt, "expected a non-empty list of addresses")
            for key in ("id", "mail_from", "raw"):
                if not isinstance(data[key], str):
                    raise InvalidMessage(f"record.{key}", data[key], "expected a string")
            for key, addr in [("mail_from", data["mail_from"]), *(("rcpt_to", r) for r in rcpt)]:
                # Envelope addresses go on SMTP command lines: an @, and no CR/LF, spaces or brackets.
                if "@" not in addr or any(c in addr for c in "\r\n <>"):
                    raise InvalidMessage(f"record.{key}", addr, "not an envelope address")
            try:
                raw = base64.b64decode(data["raw"], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidMessage("record.raw", data["raw"][:40], "not valid base64") from None
            return cls(
                id=data["id"],
                mail_from=data["mail_from"],
                rcpt_to=tuple(rcpt),
                raw=raw,
                priority=_priority(data.get("priority")),
                send_after=float(data.get("send_after") or 0.0),
                idempotency_key=data.get("idempotency_key"),
                created_at=float(data.get("created_at") or time.time()),
            )
        except KeyError as exc:
            raise InvalidMessage(f"record.{exc.args[0]}", None, "missing") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidMessage):
                raise
            raise InvalidMessage("record", str(exc), "malformed field") from None


@dataclass
class _Part:
    data: bytes
    filename: str
    maintype: str
    subtype: str
    cid: str | None = None


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
        self.sender = parse_address("sender", sender)
        self.to = parse_addresses("to", to)
        self.cc = parse_addresses("cc", cc)
        self.bcc = parse_addresses("bcc", bcc)
        if not (self.to or self.cc or self.bcc):
            raise InvalidMessage("to", to, "at least one recipient (to, cc or bcc) is required")
        self.reply_to = parse_addresses("reply_to", reply_to)
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
        self.read_receipt = parse_address("read_receipt", read_receipt) if read_receipt else None
        if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key):
            raise InvalidMessage("idempotency_key", idempotency_key, "expected a non-empty string")
        self.idempotency_key = idempotency_key
        self._parts: list[_Part] = []
        self._parsed: EmailMessage | None = None  # set by from_bytes

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
        p = Path(path)
        if not p.is_file():
            raise InvalidMessage("attachment", str(path), "no such file")
        self.attach(p.read_bytes(), filename or p.name, mimetype)

    def embed(self, data: bytes, filename: str, mimetype: str | None = None) -> str:
        """Add an inline part and return its Content-ID, for `<img src="cid:...">`."""
        cid = make_msgid(domain=self.sender.domain)[1:-1]
        self._parts.append(_Part(_as_bytes(data), _filename(filename), *_mime(filename, mimetype), cid=cid))
        return cid

    # -- building ------------------------------------------------------------

    @property
    def envelope_recipients(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for a in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(a.addr_spec, None)
        return tuple(seen)

    def build(self) -> EmailMessage:
        """The message as it will be sent (no Bcc header, ever)."""
        if self._parsed is not None:
            return self._parsed
        msg = EmailMessage(policy=SMTP_POLICY)
        msg["From"] = self.sender
        if self.to:
            msg["To"] = self.to
        if self.cc:
            msg["Cc"] = self.cc
        if self.reply_to:
            msg["Reply-To"] = self.reply_to
        msg["Subject"] = self.subject
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.domain)
        if self.read_receipt:
            msg["Disposition-Notification-To"] = str(self.read_receipt)
        for name, value in self.headers.items():
            if name.lower() in ("message-id", "date"):
                del msg[name]
            msg[name] = value
        self._set_body(msg)
        return msg

    def _set_body(self, msg: EmailMessage) -> None:
        inline = [p for p in self._parts if p.cid]
        if self.html is not None and self.text is not None:
            msg.set_content(self.text)
            msg.add_alternative(self.html, subtype="html")
        elif self.html is not None:
            msg.set_content(self.html, subtype="html")
        else:
            msg.set_content(self.text or "")
        if inline:
            if self.html is None:
                raise InvalidMessage("embed", inline[0].filename, "inline parts need an html body")
            html_part = msg.get_body(("html",))
            assert isinstance(html_part, EmailMessage)
            for p in inline:
                html_part.add_related(p.data, p.maintype, p.subtype, cid=f"<{p.cid}>",
                                      filename=p.filename, disposition="inline")
        for p in self._parts:
            if not p.cid:
                if p.maintype == "text":
                    msg.add_attachment(p.data, p.maintype, p.subtype, filename=p.filename,
                                       cte="base64")
                else:
                    msg.add_attachment(p.data, p.maintype, p.subtype, filename=p.filename)

    def to_record(self, max_size: int, send_after: float = 0.0) -> Record:
        raw = self.build().as_bytes()
        if len(raw) > max_size:
            raise MessageTooLarge("message", f"{len(raw)} bytes", f"over max-message-size ({max_size} bytes)")
        return Record(
            id=new_id(self.idempotency_key),
            mail_from=self.sender.addr_spec,
            rcpt_to=self.envelope_recipients,
            raw=raw,
            priority=self.priority,
            send_after=send_after,
            idempotency_key=self.idempotency_key,
        )

    # -- parsing -------------------------------------------------------------

    @classmethod
    def from_bytes(cls, raw: bytes, *, sender: str | None = None, recipients: Sequence[str] | None = None,
                   extra_recipients: Sequence[str] = (), from_name: str | None = None,
                   default_sender: str | None = None, local_domain: str | None = None, priority: int = 0,
                   idempotency_key: str | None = None) -> Email:
        """Parse an RFC 5322 message. The envelope sender is `sender`, else the
        From header, else `default_sender`; the recipients are `recipients`,
        else the To, Cc and Bcc headers plus `extra_recipients`; a bare local
        part (`root`, as cron writes) gets `@local_domain`. The Bcc header is
        always removed."""
        if not isinstance(raw, bytes | bytearray):
            raise InvalidMessage("raw", type(raw).__name__, "expected bytes")
        msg = BytesParser(policy=SMTP_POLICY).parsebytes(bytes(raw))
        if not msg.keys():
            raise InvalidMessage("raw", bytes(raw[:40]), "no headers: not an RFC 5322 message")

        def qualify(header: object) -> list[str]:
            # The modern parser keeps "not an address" whole (and it then
            # fails validation) where parseaddr would keep just "not".
            found = []
            for a in getattr(header, "addresses", ()):
                if not a.username:  # "undisclosed-recipients:;": a group with no one in it
                    continue
                spec = a.addr_spec if a.domain or not local_domain else f"{a.addr_spec}@{local_domain}"
                found.append(formataddr((a.display_name, spec)))
            return found

        def arg(value: str) -> list[str]:
            return qualify(SMTP_POLICY.header_factory("To", _no_crlf("recipient", value))) or [value]

        def addrs(*names: str) -> list[str]:
            return [addr for n in names for h in msg.get_all(n, []) for addr in qualify(h)]

        envelope_from = arg(sender)[0] if sender else next(iter(addrs("From")), default_sender)
        given = [addr for r in (recipients or extra_recipients) for addr in arg(r)]
        rcpt = given if recipients else [*addrs("To", "Cc", "Bcc"), *given]
        e = cls(sender=envelope_from, bcc=rcpt, priority=priority, idempotency_key=idempotency_key)
        del msg["Bcc"]
        if "From" not in msg:
            msg["From"] = formataddr((_no_crlf("from_name", from_name or ""), e.sender.addr_spec))
        if "Message-ID" not in msg:
            msg["Message-ID"] = make_msgid(domain=e.sender.domain)
        if "Date" not in msg:
            msg["Date"] = formatdate(localtime=True)
        e._parsed = msg
        return e

    # -- queueing through the default client --------------------------------

    def enqueue(self, client: Client | None = None) -> str:
        return (client or _default_client()).enqueue(self)

    def send_later(self, delay: str | float | timedelta, client: Client | None = None) -> str:
        return (client or _default_client()).send_later(self, delay)

    def send_at(self, when: datetime, client: Client | None = None) -> str:
        return (client or _default_client()).send_at(self, when)

    def __repr__(self) -> str:
        return f"Email(sender={str(self.sender)!r}, to={self.envelope_recipients!r}, subject={self.subject!r})"


def _priority(value: object) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not -PRIORITY_MAX <= value <= PRIORITY_MAX:
        raise InvalidMessage("record.priority", value, f"expected an integer from -{PRIORITY_MAX} to {PRIORITY_MAX}")
    return value


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
    mimetype = mimetype or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    maintype, _, subtype = mimetype.partition("/")
    if not maintype or not subtype or "\n" in mimetype or "\r" in mimetype:
        raise InvalidMessage("mimetype", mimetype, "expected type/subtype")
    return maintype, subtype


def header_subject(raw: bytes) -> str:
    """The decoded Subject of final message bytes ("" when none or unreadable), for
    `list` and `show`; the stores call it at ingest."""
    from email.parser import BytesHeaderParser

    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    try:
        # Split the head with compat32 (plain strings), then decode only the
        # Subject with the modern policy: parsing every header into objects
        # was half of ingest's time, for one value.
        head_msg = BytesHeaderParser(policy=policy.compat32).parsebytes(head)
        value = next((v for k, v in head_msg.raw_items() if k.lower() == "subject"), None)
        return "" if value is None else str(policy.default.header_fetch_parse("Subject", value))
    except Exception:  # a header the parser chokes on must not stop ingest
        return ""
