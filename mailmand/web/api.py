"""The HTTP API v1: JSON in and out, under /api/v1 (described by openapi.py).

Reads go through the store's contract, in a worker thread (a store call may
wait on a lock); writes go through the calls the CLI makes (`cancel`,
`requeue`, `hold`, `release`), and new mail through the producers' one door
(`submit.py`, then a group commit onto the queue: 202 once it is durable).
Every refusal is JSON: `{"error", "field", "reason"}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import InvalidMessage, InvalidState, NoStore, NotFound, QueueError, StoreError
from ..record import check_tags
from ..stores.base import Store
from ..stores.model import OPERATOR_MOVES, Key, Selection, Status
from . import submit
from .context import WebContext, web_context
from .openapi import document

MAX_LIMIT = 500  # messages in one page
DEFAULT_LIMIT = 50
EVENTS_SHOWN = 1000  # a message's events in its answer, the newest
STATS_SINCE = 86400.0  # `stats`' default window, as `mailmand stats`
JSON_OVERHEAD = 256 * 1024  # bytes of a POST body beyond its base64 content: field names, text, headers


class BadQuery(Exception):
    """A query parameter that cannot be read: 400 naming it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


Endpoint = Callable[[Request], Awaitable[Response]]


def takes(*names: str) -> Callable[[Endpoint], Endpoint]:
    """The query parameters an endpoint takes; any other is refused (400 naming it): a
    typo (`stauts=failed`) would otherwise answer for every message."""
    known = frozenset(names)

    def wrap(endpoint: Endpoint) -> Endpoint:
        async def checked(request: Request) -> Response:
            for name, value in request.query_params.multi_items():
                if name not in known:
                    return refuse(400, name, f"unknown parameter (known: {', '.join(sorted(known)) or 'none'})")
                if not value.strip():  # `since=` is a mistake, not "since ever"
                    return refuse(400, name, "given with no value: give one, or leave the parameter out")
            return await endpoint(request)
        checked.__name__ = endpoint.__name__
        return checked
    return wrap


def refuse(status: int, field: str | None, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {reason}" if field else reason, "field": field, "reason": reason},
                        status, headers)


def body_limit(ctx: WebContext) -> int:
    """The largest POST body: a message at max-message-size, base64 (4/3), and the JSON around it."""
    return math.ceil(ctx.cfg.server.max_message_size * 4 / 3) + JSON_OVERHEAD


async def read_body(request: Request, limit: int) -> bytes | JSONResponse:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return refuse(413, None, f"the body is {declared} bytes, over the limit of {limit} "
                                 "(max-message-size, base64-encoded, and the JSON around it)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return refuse(413, None, f"the body is over the limit of {limit} bytes")
    return bytes(body)


# -- new mail ------------------------------------------------------------------------


@takes()
async def create_message(request: Request) -> Response:
    ctx = web_context(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        return refuse(415, None, f"send the message as application/json (got {kind or 'no Content-Type'})")
    body = await read_body(request, body_limit(ctx))
    if isinstance(body, Response):
        return body
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return refuse(400, None, f"not JSON: {exc}")
    now = ctx.clock()
    try:
        if len(body) < 16 * 1024 and not (isinstance(data, dict) and data.get("attachments")):
            record = submit.build(data, ctx.client, now)  # microseconds: less than a hand-off to a thread
        else:
            record = await run_in_threadpool(submit.build, data, ctx.client, now)
    except submit.Refused as exc:
        return JSONResponse(exc.to_json(), exc.status)
    try:
        await ctx.commits.put(record)
    except QueueError as exc:
        return refuse(503, None, f"the queue cannot take it now: {exc}", {"Retry-After": "5"})
    return JSONResponse({"id": record.id}, 202)


# -- listing -------------------------------------------------------------------------


def cursor_of(key: Key | None) -> str | None:
    if key is None:
        return None
    raw = json.dumps([key.created_at, key.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def key_of(cursor: str) -> Key:
    try:
        created_at, message_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(created_at, int | float) or not isinstance(message_id, str):
            raise ValueError
        return Key(float(created_at), message_id)
    except (ValueError, TypeError, binascii.Error):
        raise BadQuery("cursor", "not a cursor this API gave (use `next` of the previous page)") from None


def _moment(field: str, value: str, now: float) -> float:
    """A time from a query: ISO 8601 with its offset, or a duration ago (90s, 2h, 1d)."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        from ..config.values import parse_duration

        try:
            return now - parse_duration(value, words=True)
        except (ValueError, TypeError):
            raise BadQuery(field, f"expected a time (2026-11-30T09:00:00Z) or a duration ago (90s, 2h, 1d), "
                                    f"got {value!r}") from None
    if when.tzinfo is None:
        raise BadQuery(field, f"give the time's offset (Z, +01:00): {value!r} names no zone")
    return when.timestamp()


def selection_of(request: Request, now: float) -> tuple[Selection, int, Key | None]:
    q = request.query_params
    statuses: list[Status] = []
    for given in q.getlist("status"):
        for name in filter(None, (s.strip() for s in given.split(","))):
            try:
                statuses.append(Status(name))
            except ValueError:
                raise BadQuery("status", f"expected one of {', '.join(s.value for s in Status)}, "
                                           f"got {name!r}") from None
    tags: dict[str, str] = {}
    for pair in q.getlist("tag"):
        key, eq, value = pair.partition("=")
        if not eq:
            raise BadQuery("tag", f"expected key=value, got {pair!r}")
        tags[key] = value
    try:
        check_tags(tags, "tag")
    except InvalidMessage as exc:
        raise BadQuery("tag", exc.reason) from None
    for field in ("to", "from"):
        for address in q.getlist(field):
            text = address.strip()
            if "@" not in text or text == "@" or text.endswith("@"):  # every envelope address has a domain
                raise BadQuery(field, f"expected an address or @domain, got {address!r}")
    since = _moment("since", q["since"], now) if q.get("since") else None
    limit_text = q.get("limit", str(DEFAULT_LIMIT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise BadQuery("limit", f"expected a whole number from 1 to {MAX_LIMIT}, got {limit_text!r}")
    after = key_of(q["cursor"]) if q.get("cursor") else None
    sel = Selection(statuses=tuple(dict.fromkeys(statuses)), to=tuple(q.getlist("to")),
                    sender=tuple(q.getlist("from")), since=since, tags=tuple(tags.items()))
    return sel, int(limit_text), after


@takes("status", "tag", "to", "from", "since", "limit", "cursor")
async def list_messages(request: Request) -> Response:
    ctx = web_context(request)
    try:
        sel, limit, after = selection_of(request, ctx.clock())
    except BadQuery as exc:
        return refuse(400, exc.field, exc.reason)
    page = await run_in_threadpool(ctx.store.select, sel, limit, after)
    return JSONResponse({"messages": [m.to_json() for m in page.messages], "next": cursor_of(page.next)})


# -- one message ---------------------------------------------------------------------


def message_json(ctx: WebContext, message_id: str) -> dict[str, Any] | None:
    """`mailmand show --json`'s fields, with the message's events; a message still in
    the queue as `show` gives it; None when there is no such message."""
    store = ctx.store
    try:
        info = store.get(message_id)
    except NotFound:
        return _queued(ctx, message_id)
    from ..explain import explain

    try:
        explained = explain(store, ctx.cfg, message_id, ctx.clock()).as_dict()
    except NotFound:  # purged between the reads
        return None
    events, _ = store.events(message_id=message_id, limit=EVENTS_SHOWN)
    return {**info.to_json(),
            "attempts": [a.__dict__ for a in store.attempts(message_id)],
            "recipients": [r.__dict__ for r in store.recipients(message_id)],
            "events": [e.to_json() for e in events],
            "explain": explained}


def _queued(ctx: WebContext, message_id: str) -> dict[str, Any] | None:
    from ..queues import engine, open_queue

    queue = open_queue(ctx.cfg.queue, readonly=True)
    try:
        found = queue.find(message_id)
    finally:
        queue.close()
    if found is None:
        return None
    kind = engine(ctx.cfg.queue).noun
    note = (f"taken from the {kind} by a daemon, not stored yet" if found.taken
            else f"queued in the {kind}, not ingested yet")
    return {"id": found.id, "status": "in-queue", "queue": found.where, "entry": found.entry,
            "taken": found.taken, "note": note}


def _not_found(message_id: str) -> JSONResponse:
    return refuse(404, "id", f"no message with id {message_id!r}")


@takes()
async def get_message(request: Request) -> Response:
    ctx = web_context(request)
    message_id = request.path_params["id"]
    data = await run_in_threadpool(message_json, ctx, message_id)
    return _not_found(message_id) if data is None else JSONResponse(data)


@takes()
async def get_raw(request: Request) -> Response:
    """The stored message as it goes out (`mailmand show --raw`)."""
    ctx = web_context(request)
    message_id = request.path_params["id"]
    try:
        raw = await run_in_threadpool(ctx.store.raw, message_id)
    except NotFound:
        return _not_found(message_id)
    return Response(raw, media_type="message/rfc822")


# -- the operator's moves --------------------------------------------------------------

Move = Callable[[Store, str, float], bool]  # True: moved; False: not in a status it moves from


def _one(call: Callable[[Store, str, float], object]) -> Move:
    def move(store: Store, message_id: str, now: float) -> bool:
        try:
            call(store, message_id, now)
        except InvalidState:
            return False
        return True
    return move


MOVES: dict[str, tuple[Move, bool]] = {  # the move, and whether it may make mail due now
    "cancel": (_one(lambda s, i, t: s.cancel(i, t)), False),
    "retry": (_one(lambda s, i, t: s.requeue(i, t)), True),
    "hold": (lambda s, i, t: i in s.hold([i], t), False),
    "release": (lambda s, i, t: i in s.release([i], t), True),
}


def _apply(ctx: WebContext, name: str, message_id: str) -> JSONResponse:
    store = ctx.store
    move, wakes = MOVES[name]
    try:
        store.get(message_id)
    except NotFound:
        return _not_found(message_id)
    if not move(store, message_id, ctx.clock()):
        status = store.get(message_id).status
        allowed = ", ".join(s.value for s in OPERATOR_MOVES[name])
        return refuse(409, "status", f"cannot {name} message {message_id}: it is {status.value} "
                                     f"(only {allowed} can be)")
    if wakes:
        ctx.wake()
    info = store.get(message_id)
    return JSONResponse({"id": info.id, "status": info.status.value})


def _move_route(name: str) -> Endpoint:
    @takes()
    async def endpoint(request: Request) -> Response:
        response: Response = await run_in_threadpool(_apply, web_context(request), name, request.path_params["id"])
        return response
    endpoint.__name__ = f"{name}_message"
    return endpoint


# -- the rest --------------------------------------------------------------------------


def stats_json(ctx: WebContext, window: float) -> dict[str, Any]:
    """`mailmand stats --json`, and the count of messages by status."""
    now = ctx.clock()
    data = ctx.store.stats(now - window, now)
    data["counts"] = {status.value: n for status, n in ctx.store.counts().items()}
    return data


@takes("since")
async def stats(request: Request) -> Response:
    ctx = web_context(request)
    given = request.query_params.get("since")
    window = STATS_SINCE
    if given:
        from ..config.values import parse_duration

        try:
            window = parse_duration(given, words=True)
        except (ValueError, TypeError):
            return refuse(400, "since", f"expected a duration such as 1h or 7d, got {given!r}")
    return JSONResponse(await run_in_threadpool(stats_json, ctx, window))


async def messages(request: Request) -> Response:
    return await (create_message if request.method == "POST" else list_messages)(request)


@takes()
async def openapi(request: Request) -> Response:
    return JSONResponse(document())


async def store_failed(request: Request, exc: Exception) -> Response:
    """The store or the queue cannot answer now: 503, and the daemon goes on."""
    if isinstance(exc, NoStore):
        return refuse(503, None, str(exc))
    return refuse(503, None, f"the store cannot answer now: {exc}", {"Retry-After": "5"})


EXCEPTION_HANDLERS = {StoreError: store_failed, QueueError: store_failed}

routes: list[BaseRoute] = [
    Route("/api/v1/messages", messages, methods=["GET", "POST"]),  # one route: a 405 lists both methods
    Route("/api/v1/messages/{id}", get_message, methods=["GET"]),
    Route("/api/v1/messages/{id}/raw", get_raw, methods=["GET"]),
    *(Route(f"/api/v1/messages/{{id}}/{name}", _move_route(name), methods=["POST"]) for name in MOVES),
    Route("/api/v1/stats", stats, methods=["GET"]),
    Route("/api/v1/openapi.json", openapi, methods=["GET"]),
]
