"""The API's OpenAPI 3.1 document, written out: tests/test_web_openapi.py runs
schemathesis against a live daemon with it, so what it says is what the API does."""

from __future__ import annotations

import functools
from typing import Any

from ..record import PRIORITY_MAX, new_id
from ..stores.model import Status
from ..version import __version__

NUMBER = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


def _object(properties: dict[str, Any], required: tuple[str, ...] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": list(properties if required is None else required), **extra}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field: null is the same as leaving it out."""
    return {"anyOf": [schema, {"type": "null"}]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ADDRESSES = {"oneOf": [STR, {"type": "array", "items": STR}],
             "description": "An address (`Name <a@example.com>`), a comma-separated list, or an array of them."}
TAGS = {"type": "object", "additionalProperties": STR,
        "description": "The app's own key=value pairs (keys: 1 to 32 of a-z 0-9 _ . -)."}
RECIPIENT = _object({"address": STR, "status": STR, "code": _nullable(INT), "reply": STR})
# The id the "later" example below is given (its idempotency key's): the examples then reach a real message.
ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": STR, "description": "The message's id.",
            "example": new_id("invoice-42")}
AUTH_ERRORS = {"401": _error("No token, or a wrong one."), "429": _error("Locked out after wrong tokens.")}

MESSAGE = {
    "id": STR, "status": {"enum": [s.value for s in Status]}, "mail_from": STR,
    "rcpt_to": {"type": "array", "items": STR}, "subject": STR, "priority": INT, "size": INT,
    "created_at": NUMBER, "send_after": NUMBER, "due_at": NUMBER, "attempts": INT,
    "last_code": _nullable(INT), "last_error": _nullable(STR), "updated_at": NUMBER,
    "finished_at": _nullable(NUMBER), "idempotency_key": _nullable(STR), "fails": INT,
    "held_at": _nullable(NUMBER), "paused": NUMBER, "tags": TAGS,
}

OPTIONAL: dict[str, dict[str, Any]] = {
    "to": ADDRESSES, "cc": ADDRESSES, "bcc": ADDRESSES, "reply_to": ADDRESSES,
    "subject": STR, "text": STR, "html": STR,
    "headers": {"type": "object", "additionalProperties": STR},
    "attachments": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["filename", "content_base64"],
        "properties": {"filename": STR, "content_type": _or_null(STR),
                       "content_base64": {**STR, "contentEncoding": "base64"}}}},
    "send_at": {**STR, "format": "date-time", "description": "ISO 8601 with its offset; not with send_in."},
    "send_in": {**STR, "description": "A delay such as `90s`, `5m`, `1h30m`; not with send_at."},
    "priority": {**INT, "minimum": -PRIORITY_MAX, "maximum": PRIORITY_MAX},
    "idempotency_key": {**STR, "minLength": 1,
                        "description": "The same key gives the same id, and the message is queued once."},
    "tags": TAGS,
}

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": STR, "field": _nullable(STR), "reason": STR}),
    "Health": _object({"status": {"enum": ["ok", "failing"]}, "problems": {"type": "array", "items": STR},
                       "relays": {"type": "array", "items": {"type": "object"},
                                  "description": "Each relay's state, as `mailmand status --json` gives it."}}),
    "NewMessage": {
        "type": "object", "additionalProperties": False, "required": ["from"],
        "properties": {"from": STR, **{name: _or_null(schema) for name, schema in OPTIONAL.items()}},
    },
    "Accepted": _object({"id": STR}),
    "Message": _object(MESSAGE, description="Times are seconds since the epoch (UTC)."),
    "Attempt": _object({"at": NUMBER, "relay": STR, "code": _nullable(INT), "reply": STR, "duration": NUMBER,
                        "outcome": {"enum": ["sent", "temporary", "permanent", "expired"]},
                        "daemon": _nullable(STR)}),
    "Recipient": RECIPIENT,
    "Event": _object({"id": STR, "type": STR, "message": STR, "tags": TAGS,
                      "recipients": {"type": "array", "items": RECIPIENT}, "relay": _nullable(STR),
                      "code": _nullable(INT), "reply": _nullable(STR), "attempt": INT, "at": NUMBER}),
    # `show --json`: the message, with `attempts` the list of them (not their count).
    "MessageDetail": _object({**MESSAGE, "attempts": {"type": "array", "items": _ref("Attempt")},
                              "recipients": {"type": "array", "items": _ref("Recipient")},
                              "events": {"type": "array", "items": _ref("Event")},
                              "explain": _ref("Explanation")}),
    # `mailmand explain --json`: where the message is, why, and when it moves; the facts
    # behind the sentence vary with the state.
    "Explanation": {"type": "object", "required": ["id", "state", "text"],
                    "properties": {"id": STR, "state": STR, "text": STR}},
    "InQueue": _object({"id": STR, "status": {"const": "in-queue"}, "queue": STR, "entry": STR,
                        "taken": {"type": "boolean"}, "note": STR},
                       description="Accepted and durable, not yet in the store: the daemon ingests it next."),
    "Page": _object({"messages": {"type": "array", "items": _ref("Message")}, "next": _nullable(STR)}),
    "Moved": _object({"id": STR, "status": {"enum": [s.value for s in Status]}}),
    "Stats": _object({
        "since": NUMBER, "until": NUMBER, "sent": INT, "failed": INT, "expired": INT,
        "messages": {"type": "object", "additionalProperties": INT},
        "attempts": {"type": "object", "additionalProperties": INT},
        "latency": _object({k: _nullable(NUMBER) for k in ("p50", "p95", "p99")}),
        "top_failures": {"type": "array", "items": _object({"reason": STR, "count": INT})},
        "depth_hourly": {"type": "array", "items": _object({"hour": NUMBER, "depth": INT})},
        "counts": {"type": "object", "additionalProperties": INT},
    }),
}


EXAMPLES = {
    "plain": {"summary": "A text message", "value": {
        "from": "Shop <shop@example.com>", "to": ["ann@example.com"], "subject": "Your order",
        "text": "Thanks for your order.", "tags": {"order": "42"}}},
    "later": {"summary": "HTML with an attachment, in five minutes, once", "value": {
        "from": "shop@example.com", "to": "ann@example.com", "bcc": ["archive@example.com"],
        "subject": "Invoice", "html": "<p>Your invoice.</p>", "send_in": "5m", "idempotency_key": "invoice-42",
        "attachments": [{"filename": "invoice.txt", "content_type": "text/plain", "content_base64": "SW52b2ljZQ=="}]}},
}


def _move(name: str, what: str) -> dict[str, Any]:
    return {"post": {
        "operationId": f"{name}Message", "summary": what, "parameters": [ID_PARAM],
        "responses": {"200": _json("Moved: the message's new status.", _ref("Moved")),
                      "404": _error("No such message."),
                      "409": _error("Not in a status this move starts from."), **AUTH_ERRORS}}}


@functools.cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailmand", "version": __version__,
                 "description": "Queue mail and watch it go out. Every path but /healthz needs "
                                "`Authorization: Bearer <token>` when a token is configured."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/healthz": {"get": {
                "operationId": "health", "summary": "Whether the daemon is working", "security": [],
                "responses": {"200": _json("Working.", _ref("Health")),
                              "503": _json("A part is failing: `problems` says which.", _ref("Health"))}}},
            "/api/v1/messages": {
                "post": {
                    "operationId": "createMessage", "summary": "Queue a message",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": _ref("NewMessage"), "examples": EXAMPLES}}},
                    "responses": {
                        "202": _json("Queued: durable on disk (or in the shared queue).", _ref("Accepted")),
                        "400": _error("Not a JSON object."),
                        "413": _error("Over max-message-size, or a body over its limit."),
                        "415": _error("Not application/json."),
                        "422": _error("A field is wrong: `field` names it, `reason` says why."),
                        "503": _error("The queue cannot take it now: try again."),
                        **AUTH_ERRORS}},
                "get": {
                    "operationId": "listMessages", "summary": "Messages, newest first, a page at a time",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "array", "items": {
                            "enum": [s.value for s in Status]}}, "style": "form", "explode": True,
                         "description": "Any of these statuses (repeat, or separate with commas)."},
                        {"name": "tag", "in": "query", "schema": {"type": "array", "items": STR},
                         "description": "key=value; every one given must match."},
                        {"name": "to", "in": "query", "schema": {"type": "array", "items": STR},
                         "description": "A recipient, or @domain."},
                        {"name": "from", "in": "query", "schema": {"type": "array", "items": STR},
                         "description": "The envelope sender, or @domain."},
                        {"name": "since", "in": "query", "schema": STR,
                         "description": "Created at or after: ISO 8601 with its offset, or a duration ago (2h)."},
                        {"name": "limit", "in": "query", "schema": {**INT, "minimum": 1, "maximum": 500,
                                                                      "default": 50}},
                        {"name": "cursor", "in": "query", "schema": STR,
                         "description": "`next` of the previous page."},
                    ],
                    "responses": {"200": _json("A page.", _ref("Page")),
                                  "400": _error("A parameter is wrong: `field` names it."), **AUTH_ERRORS}},
            },
            "/api/v1/messages/{id}": {"get": {
                "operationId": "getMessage", "summary": "A message, its attempts, recipients and events",
                "parameters": [ID_PARAM],
                "responses": {"200": _json("The message (or, not yet stored, where it waits).",
                                           {"anyOf": [_ref("MessageDetail"), _ref("InQueue")]}),
                              "404": _error("No such message."), **AUTH_ERRORS}}},
            "/api/v1/messages/{id}/raw": {"get": {
                "operationId": "getRawMessage", "summary": "The stored message as it goes out",
                "parameters": [ID_PARAM],
                "responses": {"200": {"description": "RFC 5322", "content": {"message/rfc822": {"schema": STR}}},
                              "404": _error("No such message."), **AUTH_ERRORS}}},
            "/api/v1/messages/{id}/cancel": _move("cancel", "Cancel a queued, deferred or held message"),
            "/api/v1/messages/{id}/retry": _move("retry", "Send a failed or expired message again"),
            "/api/v1/messages/{id}/hold": _move("hold", "Set a queued or deferred message aside"),
            "/api/v1/messages/{id}/release": _move("release", "Send a held message again"),
            "/api/v1/stats": {"get": {
                "operationId": "stats", "summary": "`mailmand stats --json`, and the messages by status",
                "parameters": [{"name": "since", "in": "query", "schema": STR,
                                "description": "How far back: a duration (default 24h)."}],
                "responses": {"200": _json("Figures since then.", _ref("Stats")),
                              "400": _error("`since` is not a duration."), **AUTH_ERRORS}}},
            "/api/v1/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              **AUTH_ERRORS}}},
        },
    }
