"""The standard library's `email` package behind message.py, imported only
when a message needs it: a composed message outside what message.py writes
itself (see `Email._plain`), a message to parse, an address to check that is
not a plain `local@domain` or `Name <local@domain>`. Importing the package (and
the `socket`, `urllib`, `calendar` and `random` it brings) is tens of ms of a
short process's start.
"""

from __future__ import annotations

from email import errors, headerregistry, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.utils import formatdate, getaddresses, make_msgid, parseaddr

from .errors import HeaderInjection, InvalidAddress, InvalidMessage
from .message import COMPOSED_HEADERS, _idna, _no_crlf

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .message import Email


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


def decoded(value: str) -> str:
    """The value as the email package will see it: RFC 2047 encoded words decoded."""
    try:
        return str(SMTP_POLICY.header_factory("X-Decoded", value))
    except Exception:  # an undecodable word stays encoded on output: nothing to inject
        return value


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


def realize(simple: dict[str, list[tuple[str, str, str]]]) -> dict[str, Address | list[Address] | None]:
    """message.py's plain addresses (display name, local part, domain) as the
    Address objects `parse_address` makes of them."""
    def made(found: tuple[str, str, str]) -> Address:
        display, local, domain = found
        return Address(display_name=display, addr_spec=f"{local}@{domain}")

    out: dict[str, Address | list[Address] | None] = {
        name: [made(a) for a in simple[name]] for name in ("to", "cc", "bcc", "reply_to")}
    out["sender"] = made(simple["sender"][0])
    out["read_receipt"] = made(simple["read_receipt"][0]) if simple["read_receipt"] else None
    return out


def build(email: Email) -> EmailMessage:
    """The message as it will be sent (no Bcc header, ever)."""
    utf8 = not all(a.username.isascii() for a in (email.sender, *email.to, *email.cc, *email.reply_to))
    # A UTF-8 local part cannot be an encoded word: such headers go out as UTF-8 (RFC 6532).
    msg = EmailMessage(policy=SMTP_UTF8_POLICY if utf8 else SMTP_POLICY)
    msg["From"] = email.sender
    if email.to:
        msg["To"] = email.to
    if email.cc:
        msg["Cc"] = email.cc
    if email.reply_to:
        msg["Reply-To"] = email.reply_to
    msg["Subject"] = email.subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=email.sender.domain)
    if email.read_receipt:
        msg["Disposition-Notification-To"] = str(email.read_receipt)
    for name, value in email.headers.items():
        if name.lower() in ("message-id", "date"):
            del msg[name]
        msg[name] = value
    set_body(email, msg)
    return msg


def set_body(email: Email, msg: EmailMessage) -> None:
    inline = [p for p in email._parts if p.cid]
    if email.html is not None and email.text is not None:
        msg.set_content(email.text)
        msg.add_alternative(email.html, subtype="html")
    elif email.html is not None:
        msg.set_content(email.html, subtype="html")
    else:
        msg.set_content(email.text or "")
    if inline:
        if email.html is None:
            raise InvalidMessage("embed", inline[0].filename, "inline parts need an html body")
        html_part = msg.get_body(("html",))
        assert isinstance(html_part, EmailMessage)
        for p in inline:
            html_part.add_related(p.data, p.maintype, p.subtype, cid=f"<{p.cid}>",
                                  filename=p.filename, disposition="inline")
    for p in email._parts:
        if not p.cid:
            if p.maintype == "text":
                msg.add_attachment(p.data, p.maintype, p.subtype, filename=p.filename,
                                   cte="base64")
            else:
                msg.add_attachment(p.data, p.maintype, p.subtype, filename=p.filename)


def no_new_headers(raw: bytes, custom: Mapping[str, str]) -> None:
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
