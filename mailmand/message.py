"""Composing and parsing messages, and the record that goes on the queue.

Everything is built with the standard library's `email` package (policy
`email.policy.SMTP`); the record carries the final bytes, so the daemon never
composes again.
"""

from __future__ import annotations

import re
import time
from email import errors, headerregistry, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.utils import formatdate, getaddresses, make_msgid, parseaddr

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
    from pathlib import Path

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
SMTP_UTF8_POLICY = SMTP_POLICY.clone(utf8=True)
# The boundaries of str.splitlines(): the email package folds a header at
# each of them, so any one inside a value could start a header of its own.
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _decoded(value: str) -> str:
    """The value as the email package will see it: RFC 2047 encoded words decoded."""
    try:
        return str(SMTP_POLICY.header_factory("X-Decoded", value))
    except Exception:  # an undecodable word stays encoded on output: nothing to inject
        return value


def _no_crlf(name: str, value: str) -> str:
    if not LINE_BREAKS.isdisjoint(value):
        raise HeaderInjection(name, value, "a line break (CR, LF or another) is not allowed in a header value")
    # "=?utf-8?q?a=0D=0AX-Injected:_1?=" decodes to CR LF, which the stdlib
    # would re-fold into a header line of its own (a Bcc, a Reply-To...).
    if "=?" in value and not LINE_BREAKS.isdisjoint(_decoded(value)):
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


def _address(name: str, display: str, spec: str, original: object) -> Address:
    local, at, domain = spec.rpartition("@")
    if (not at or not local or not domain or " " in domain or domain.startswith(".") or ".." in domain
            or (isinstance(original, str) and spec not in original)):
        # (getaddresses drops the space in "ann@exa mple.com": the spec it
        # returns would then not be in what the caller wrote)
        raise InvalidAddress(name, original, "not a valid email address")
    domain = _idna(domain, name, original)
    _no_crlf(name, display)  # a display name's encoded words are decoded on output
    try:
        # A UTF-8 local part stays as it is: the relay must offer SMTPUTF8 (RFC 6531).
        if not local.isascii():
            if any(c in local for c in ' "\\()<>[]:;@,'):
                raise ValueError("a non-ASCII local part must be a plain dot-atom")
            return Address(display_name=display, username=local, domain=domain)
        return Address(display_name=display, addr_spec=f"{local}@{domain}")
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
        # The envelope sender when it is not the From address: "" is the null
        # sender (`<>`) of a bounce, which nothing may answer.
        self.envelope_from: str | None = None

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
        utf8 = not all(a.username.isascii() for a in (self.sender, *self.to, *self.cc, *self.reply_to))
        # A UTF-8 local part cannot be an encoded word: such headers go out as UTF-8 (RFC 6532).
        msg = EmailMessage(policy=SMTP_UTF8_POLICY if utf8 else SMTP_POLICY)
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

    def to_record(self, max_size: int, send_after: float = 0.0, max_recipients: int = MAX_RECIPIENTS) -> Record:
        rcpt = self.envelope_recipients
        check_recipients(len(rcpt), max_recipients, "to")
        check_send_after(send_after, time.time(), "send_after")
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
            _no_new_headers(raw, self.headers)
        if len(raw) > max_size:
            raise MessageTooLarge(
                "message", f"{len(raw)} bytes",
                f"{len(raw)} bytes as encoded for sending, over max-message-size ({max_size} bytes); "
                "attachments grow by about a third in transfer encoding (base64)")
        subject = msg.get("Subject")
        return Record(
            id=new_id(self.idempotency_key),
            mail_from=self.sender.addr_spec if self.envelope_from is None else self.envelope_from,
            rcpt_to=rcpt,
            raw=raw,
            priority=self.priority,
            send_after=send_after,
            idempotency_key=self.idempotency_key,
            subject="" if subject is None else str(subject),
        )

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


def _no_new_headers(raw: bytes, custom: Mapping[str, str]) -> None:
    """Refuse a flattened message that gained a header the caller did not give
    (the last line of defence against a decoded line break, in any part)."""
    allowed = COMPOSED_HEADERS | {name.lower() for name in custom}
    for part in BytesParser(policy=policy.compat32).parsebytes(raw).walk():
        for name in part.keys():
            if name.lower() not in allowed:
                raise HeaderInjection("headers", name, "the composed message gained a header nobody gave")
def header_subject(raw: bytes) -> str:
    """The decoded Subject of a flattened message ("" when there is none or it
    does not parse): for records written before they carried it."""
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
