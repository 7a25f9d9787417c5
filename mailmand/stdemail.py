"""The standard library's `email` package behind message.py and raw.py,
imported only when a message needs it: a composed message outside what
message.py writes itself (see `Email._plain`), a raw message whose fields must
be written anew (a bare name, non-ASCII text) or that has no header at all.
Importing the package (and the `socket`, `urllib`, `calendar` and `random` it
brings) is tens of ms of a short process's start.
"""

from __future__ import annotations

from email import headerregistry, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.utils import formatdate, make_msgid

from .errors import InvalidMessage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .headers import Mailbox
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


def address(mailbox: Mailbox) -> Address:
    """A checked (display name, local part, domain) as the email package's Address."""
    display, local, domain = mailbox
    return Address(display_name=display, username=local, domain=domain)


def fold(name: str, value: str | Sequence[Mailbox], utf8: bool = False) -> bytes:
    """One header field as the email package writes it (encoded words for non-ASCII
    text, or UTF-8 under SMTPUTF8; folded at 78), CRLF-ended. `value` is text, or the
    mailboxes of an address field."""
    chosen = SMTP_UTF8_POLICY if utf8 else SMTP_POLICY
    header = chosen.header_factory(name, value if isinstance(value, str) else [address(m) for m in value])
    try:
        return header.fold(policy=chosen).encode("utf-8" if utf8 else "ascii")
    except UnicodeEncodeError:  # a UTF-8 local part has no encoded form (RFC 2047 §5)
        raise InvalidMessage(f"header {name}", str(header), "a header holds text that cannot be encoded "
                             "(non-ASCII where only ASCII may go)") from None


def body_only(data: bytes) -> bytes:
    """A message with no header at all (`echo "disk is full" | sendmail root`): the whole
    input as a text body, with its MIME fields; the caller writes the rest of the head."""
    msg = EmailMessage(policy=SMTP_POLICY)
    try:
        msg.set_content(data.decode("utf-8"))
    except UnicodeDecodeError:  # keep the bytes as they came; say we do not know the charset
        msg.set_content(data, "text", "plain", params={"charset": "unknown-8bit"})
    return msg.as_bytes()


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
    inline = [p for p in email.parts if p.cid]
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
    for p in email.parts:
        if not p.cid:
            if p.maintype == "text":
                msg.add_attachment(p.data, p.maintype, p.subtype, filename=p.filename,
                                   cte="base64")
            else:
                msg.add_attachment(p.data, p.maintype, p.subtype, filename=p.filename)


def part_fields(raw: bytes) -> list[list[str]]:
    """The field names of each MIME part below the top of a flattened message."""
    parts = BytesParser(policy=policy.compat32).parsebytes(raw).walk()
    next(parts)  # the top: the caller reads its head itself
    return [list(part.keys()) for part in parts]


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
        return "" if value is None else subject_text(value)
    except Exception:  # a header the parser chokes on must not stop ingest
        return ""


def subject_text(value: str) -> str:
    """A Subject field's value as a reader sees it: encoded words decoded, unfolded."""
    return str(policy.default.header_fetch_parse("Subject", value))
