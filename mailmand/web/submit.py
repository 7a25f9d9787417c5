"""`POST /api/v1/messages`: a JSON body into the record every producer makes.

The body names the API's fields; an `Email` is built from them, and
`Client.record` makes and validates the record exactly as `Client.enqueue`
does (`record.validate`, the one door). What is wrong is reported with the
API's name of the field (`from`, not the `sender` argument; `send_at`, not
`send_after`) and the reason the door gave.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from typing import Any

from ..client import Client
from ..errors import InvalidMessage, MessageTooLarge
from ..message import Email
from ..record import Record

# The body's fields, and what each must be as JSON (the door checks the rest).
TEXT_FIELDS = ("from", "subject", "text", "html", "idempotency_key", "send_at", "send_in")
ADDRESS_FIELDS = ("to", "cc", "bcc", "reply_to")
FIELDS = frozenset({*TEXT_FIELDS, *ADDRESS_FIELDS, "headers", "attachments", "priority", "tags"})
ATTACHMENT_FIELDS = frozenset({"filename", "content_type", "content_base64"})
MAX_ATTACHMENTS = 100
# The door's names for what the API calls otherwise.
RENAMED = {"sender": "from", "record.mail_from": "from", "record.rcpt_to": "to", "mimetype": "content_type"}


class Refused(Exception):
    """A body that cannot be queued: the HTTP status, the API's field (None: the body
    as a whole) and the reason."""

    def __init__(self, status: int, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.status = status
        self.field = field
        self.reason = reason

    def to_json(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field, "reason": self.reason}


def _field_name(door: str, when_field: str | None) -> str:
    if door == "send_after" or door == "record.send_after":
        return when_field or "send_at"
    name = RENAMED.get(door, door)
    return name[len("record."):] if name.startswith("record.") else name


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise Refused(422, name, f"expected a string, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), "null")


def _addresses(body: dict[str, Any], name: str) -> str | list[str] | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise Refused(422, name, "expected an address or an array of addresses (strings)")


def send_after(body: dict[str, Any], now: float) -> tuple[float, str | None]:
    """(epoch seconds, the field that gave it) from `send_at` (ISO 8601 with its offset)
    or `send_in` (a duration such as 5m); (0.0, None): now."""
    at, within = _text(body, "send_at"), _text(body, "send_in")
    if at is not None and within is not None:
        raise Refused(422, "send_at", "give send_at or send_in, not both")
    if at is not None:
        try:
            when = datetime.fromisoformat(at.strip())
        except ValueError:
            raise Refused(422, "send_at", f"expected an ISO 8601 time such as 2026-12-24T18:00:00Z, got {at!r}") \
                from None
        if when.tzinfo is None:  # the server's local time would be a guess at the caller's
            raise Refused(422, "send_at", f"give the time's offset (Z, +01:00): {at!r} names no zone")
        return when.timestamp(), "send_at"
    if within is not None:
        from ..config.values import parse_duration

        try:
            delay = parse_duration(within)
        except (ValueError, TypeError) as exc:
            raise Refused(422, "send_in", f"expected a duration such as 90s, 5m or 1h30m ({exc})") from None
        if not math.isfinite(delay):
            raise Refused(422, "send_in", "expected a finite duration")
        return now + max(0.0, delay), "send_in"
    return 0.0, None


def build(body: object, client: Client, now: float) -> Record:
    """The validated record for a decoded JSON body; Refused names what is wrong."""
    if not isinstance(body, dict):
        raise Refused(400, None, f"expected a JSON object, got {_json_type(body)}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise Refused(422, unknown[0], f"unknown field (known: {', '.join(sorted(FIELDS))})")
    when, when_field = send_after(body, now)
    headers = body.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise Refused(422, "headers", "expected an object of header name to value")
    priority = body.get("priority", 0)
    if priority is None:
        priority = 0
    attachments = body.get("attachments") or []
    if not isinstance(attachments, list):
        raise Refused(422, "attachments", "expected an array of {filename, content_type, content_base64}")
    if len(attachments) > MAX_ATTACHMENTS:
        raise Refused(422, "attachments", f"at most {MAX_ATTACHMENTS} attachments")
    try:
        email = Email(
            sender=_text(body, "from"), to=_addresses(body, "to"), cc=_addresses(body, "cc"),
            bcc=_addresses(body, "bcc"), reply_to=_addresses(body, "reply_to"), subject=_text(body, "subject") or "",
            text=_text(body, "text"), html=_text(body, "html"), headers=headers, priority=priority,
            idempotency_key=_text(body, "idempotency_key"), tags=body.get("tags"),
        )
        for i, attachment in enumerate(attachments):
            _attach(email, i, attachment)
        return client.record(email, send_after=when)
    except MessageTooLarge as exc:
        raise Refused(413, "message", exc.reason) from None
    except InvalidMessage as exc:
        raise Refused(422, _field_name(exc.field, when_field), exc.reason) from None


def _attach(email: Email, i: int, attachment: object) -> None:
    where = f"attachments[{i}]"
    if not isinstance(attachment, dict):
        raise Refused(422, where, "expected an object {filename, content_type, content_base64}")
    unknown = sorted(set(attachment) - ATTACHMENT_FIELDS)
    if unknown:
        raise Refused(422, f"{where}.{unknown[0]}", "unknown field (known: filename, content_type, content_base64)")
    data = attachment.get("content_base64")
    if not isinstance(data, str):
        raise Refused(422, f"{where}.content_base64", "required: the content, base64-encoded")
    try:
        content = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(422, f"{where}.content_base64", "not base64 (RFC 4648 §4, no line breaks)") from None
    content_type = attachment.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise Refused(422, f"{where}.content_type", "expected type/subtype, such as application/pdf")
    try:
        email.attach(content, attachment.get("filename"), content_type)  # type: ignore[arg-type]
    except InvalidMessage as exc:
        raise Refused(422, f"{where}.{_field_name(exc.field, None)}", exc.reason) from None
