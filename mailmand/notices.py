"""Failure notices: RFC 3464 delivery status notifications (off by default).

`email.server.notify.bounce: true` sends the envelope sender a
multipart/report (RFC 6522) when a message fails or expires, or when a
recipient of it is refused for good; `copy-to` sends a copy of each notice
to an operator (on its own, without `bounce`, only the operator gets them).

A notice goes out with the null sender (`MAIL FROM:<>`), so that nothing
answers it: a notice is never sent for mail from the null sender, and so
never for a notice itself (RFC 5321 §4.5.5, RFC 3464 §2). Notices are
inserted into the store as ordinary messages, due now, and go out with the
next claim.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence

from .config import NotifyConfig
from .errors import StoreError
from .headers import formatdate
from .record import Record, new_id
from .stores.base import Store
from .stores.model import Finished, MessageInfo, RecipientOutcome, Status

log = logging.getLogger(__name__)

FINAL = (Status.SENT, Status.FAILED, Status.EXPIRED)
ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")  # RFC 3463
EXPIRED_STATUS = "4.4.7"  # RFC 3463: delivery time expired
HEAD_LIMIT = 64 * 1024  # the original's headers returned, at most


def _status(code: int | None, reply: str, expired: bool) -> str:
    found = ENHANCED.search(reply or "")
    if found:
        return found.group(1)
    if expired:
        return EXPIRED_STATUS
    return "5.0.0" if code is not None and code >= 500 else "4.0.0"


def _head(raw: bytes) -> bytes:
    end = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=len(raw))
    return raw[: min(end, HEAD_LIMIT)].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"


def compose(msg: MessageInfo, raw: bytes, failed: Sequence[tuple[str, int | None, str]], *, expired: bool,
            relay: str, domain: str, to: str, now: float) -> bytes:
    """The notice's bytes: a human part, the machine part (message/delivery-status)
    and the original's headers (text/rfc822-headers)."""
    boundary = f"mailmand-{os.urandom(16).hex()}"
    when = formatdate(now)
    lines = "".join(f"  <{addr}>: {reply or 'no reply'}\r\n" for addr, _, reply in failed)
    why = "it could not be delivered before max-time passed" if expired else "the relay refused it for good"
    human = (f"This is the mailmand daemon at {domain}.\r\n\r\n"
             f"Your message {msg.id} could not be delivered to the recipients below:\r\n"
             f"{why}.\r\n\r\n{lines}\r\nThe headers of your message follow the report.\r\n")
    report = f"Reporting-MTA: dns; {domain}\r\nX-Mailmand-Queue-ID: {msg.id}\r\n"
    if msg.send_after:
        report += f"Arrival-Date: {formatdate(msg.send_after)}\r\n"
    for addr, code, reply in failed:
        report += (f"\r\nFinal-Recipient: rfc822; {addr}\r\nAction: failed\r\n"
                   f"Status: {_status(code, reply, expired)}\r\nRemote-MTA: dns; {relay.rsplit(':', 1)[0]}\r\n"
                   f"Diagnostic-Code: smtp; {(reply or 'no reply').replace(chr(13), ' ').replace(chr(10), ' ')}\r\n"
                   f"Last-Attempt-Date: {when}\r\n")
    head = (f"From: Mail Delivery System <MAILER-DAEMON@{domain}>\r\nTo: <{to}>\r\n"
            f"Subject: Undelivered Mail Returned to Sender\r\nDate: {when}\r\n"
            f"Message-ID: <{os.urandom(16).hex()}@{domain}>\r\n"
            "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"  # RFC 3834: no one should answer it
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n')
    parts = [
        b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n' + human.encode(),
        b"Content-Type: message/delivery-status\r\n\r\n" + report.encode("utf-8"),
        b"Content-Type: text/rfc822-headers\r\n\r\n" + _head(raw),
    ]
    body = b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    return head.encode("utf-8") + body


# What a notice needs of the message an outcome is about: its record, its bytes
# and each recipient's outcome so far (those already delivered are not reported).
Lookup = Callable[[str], tuple[MessageInfo, bytes, Sequence[RecipientOutcome]]]


def _failed(info: MessageInfo, row: Finished, known: Sequence[RecipientOutcome]) -> list[tuple[str, int | None, str]]:
    """(address, code, reply) of each recipient the message did not reach."""
    if row.outcome.status is Status.SENT:  # delivered, but some recipients were refused for good
        return [(r.address, r.code, r.reply) for r in row.recipients if r.status == "failed"]
    undelivered = [(r.address, r.code, r.reply) for r in row.recipients if r.status != "sent"]
    if undelivered:
        return undelivered
    delivered = {r.address for r in known if r.status == "sent"}
    reason = row.outcome.reason or row.attempt.reply
    return [(addr, row.outcome.code, reason) for addr in info.rcpt_to if addr not in delivered]


def notices(cfg: NotifyConfig, rows: Sequence[Finished], lookup: Lookup, domain: str,
            now: float | None = None) -> list[Record]:
    """The notices owed for these recorded outcomes (none when notify is off)."""
    if not (cfg.bounce or cfg.copy_to):
        return []
    out = []
    for row in rows:
        if row.outcome.status not in FINAL:
            continue
        if row.outcome.status is Status.SENT and not any(r.status == "failed" for r in row.recipients):
            continue  # delivered to everyone: nothing to look up
        info, raw, known = lookup(row.id)
        if not info.mail_from:
            continue  # from the null sender: a notice itself, or a bounce
        failed = _failed(info, row, known)
        if not failed:
            continue
        # Dated when the outcome was: a dispatcher run with an injected clock (tests, --once) agrees.
        at = row.attempt.at if now is None else now
        rcpt = ([info.mail_from] if cfg.bounce else []) + ([cfg.copy_to] if cfg.copy_to else [])
        notice = compose(info, raw, failed, expired=row.outcome.status is Status.EXPIRED, relay=row.attempt.relay,
                         domain=domain, to=info.mail_from if cfg.bounce else cfg.copy_to or "", now=at)
        out.append(Record(id=new_id(), mail_from="", rcpt_to=tuple(dict.fromkeys(rcpt)), raw=notice,
                          created_at=at))
    return out


def send_notices(store: Store, cfg: NotifyConfig, rows: Sequence[Finished], held: Sequence[bool]) -> int:
    """The dispatcher's hook, after `store.finish(rows)` returned `held`: queue
    the notices owed for the outcomes it recorded (a lost lease's outcome is
    the new owner's to report). Never raises: a notice that cannot be stored
    is logged, and delivery goes on."""
    if not (cfg.bounce or cfg.copy_to):
        return 0
    from .hostname import mail_domain

    def lookup(message_id: str) -> tuple[MessageInfo, bytes, Sequence[RecipientOutcome]]:
        return store.get(message_id), store.raw(message_id), store.recipients(message_id)

    try:
        records = notices(cfg, [r for r, ok in zip(rows, held, strict=True) if ok], lookup, mail_domain())
        return store.insert(records) if records else 0
    except (StoreError, OSError, ValueError) as exc:
        log.error("could not queue failure notice(s): %s", exc)
        return 0
