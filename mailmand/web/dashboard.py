"""The dashboard's pages: the overview at /, the messages, one message (with
`mailmand explain`'s paragraph), and the
operator's moves (retry, cancel, hold, release) behind a confirmation page.

Pages are rendered here (templates/, every value escaped by Jinja2); the reads
are queries.py's and the API's own (`api.selection_of`, `api.message_json`,
`api.MOVES`), so a page and the API never disagree. A move is a POST form
carrying the page's CSRF token, which the auth middleware checks before any
route runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import NotFound
from ..stores.model import OPERATOR_MOVES, Status
from ..version import __version__
from . import api, queries
from .context import WebContext, web_context
from .render import templates

PAGE = 50  # messages on a page of the list
FILTERS = ("status", "to", "from", "tag", "since")  # the list's query parameters, besides `cursor`
ACTIONS = {  # the moves a page offers: (button, what it does, in the confirmation's words)
    "retry": ("Retry", "send it again, with a fresh max-fails budget"),
    "cancel": ("Cancel", "never send it"),
    "hold": ("Hold", "set it aside: no daemon sends it until it is released"),
    "release": ("Release", "let it be sent again, when it is due"),
}


def when(ts: float | None) -> str:
    """Local time with the zone offset, to the second; `-` for none."""
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().isoformat(sep=" ", timespec="seconds")


def short(ts: float | None) -> str:
    """Local time, month, day and time of day: a list's column (the page's title has the rest)."""
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%b %d %H:%M:%S")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else age(seconds)


templates.env.filters.update(when=when, short=short, age=age, ms=ms)


def page(request: Request, name: str, data: dict[str, Any], status: int = 200) -> Response:
    return templates.TemplateResponse(request, name, {"version": __version__, "nav": name, **data}, status)


async def overview(request: Request) -> Response:
    data = await run_in_threadpool(queries.overview, web_context(request))
    return page(request, "overview.html", {"o": data, "statuses": [s.value for s in Status]})


async def messages(request: Request) -> Response:
    ctx = web_context(request)
    params = request.query_params
    # A filter form sends its empty fields too: the page's address carries only those given.
    if any(not v.strip() for _, v in params.multi_items()):
        kept = [(k, v) for k, v in params.multi_items() if v.strip()]
        return RedirectResponse(f"/messages?{urlencode(kept)}" if kept else "/messages", 303)
    unknown = sorted(set(params) - {*FILTERS, "cursor"})
    form = {name: params.get(name, "") for name in FILTERS}
    data: dict[str, Any] = {"form": form, "statuses": [s.value for s in Status], "error": None,
                            "messages": [], "next": None, "first": None}
    if unknown:
        data["error"] = f"{unknown[0]}: unknown filter (known: {', '.join(FILTERS)})"
        return page(request, "messages.html", data, 400)
    try:
        sel, _, after = api.selection_of(request, ctx.clock())
    except api.BadQuery as exc:
        data["error"] = f"{exc.field}: {exc.reason}"
        return page(request, "messages.html", data, 400)
    found = await run_in_threadpool(ctx.store.select, sel, PAGE, after)
    filters = [(k, v) for k, v in params.multi_items() if k != "cursor"]
    nxt = api.cursor_of(found.next)
    data.update(messages=found.messages,
                next=f"/messages?{urlencode([*filters, ('cursor', nxt)])}" if nxt else None,
                first=(f"/messages?{urlencode(filters)}" if filters else "/messages") if after else None)
    return page(request, "messages.html", data)


def _message(ctx: WebContext, message_id: str) -> dict[str, Any] | None:
    from ..explain import explain

    found = api.message_json(ctx, message_id)
    if found is None or found.get("status") == "in-queue":
        return found
    try:
        found["source"] = queries.source(ctx, message_id)
        if "explain" not in found:
            found["explain"] = explain(ctx.store, ctx.cfg, message_id, ctx.clock()).as_dict()
    except NotFound:  # purged between the reads
        return None
    return found


async def message(request: Request) -> Response:
    ctx = web_context(request)
    message_id = request.path_params["id"]
    found = await run_in_threadpool(_message, ctx, message_id)
    if found is None:
        return page(request, "missing.html", {"id": message_id}, 404)
    status = found["status"]
    offered = [(name, ACTIONS[name][0]) for name in ACTIONS
               if any(s.value == status for s in OPERATOR_MOVES[name])]
    return page(request, "message.html", {"m": found, "actions": offered,
                                          "done": request.query_params.get("done")})


def _action(request: Request) -> tuple[str, str] | None:
    name = request.path_params["action"]
    return (request.path_params["id"], name) if name in ACTIONS else None


async def confirm(request: Request) -> Response:
    """The confirmation of a move: what it does, and the form that makes it."""
    target = _action(request)
    if target is None:
        return page(request, "missing.html", {"id": request.path_params["id"]}, 404)
    message_id, name = target
    ctx = web_context(request)
    try:
        info = await run_in_threadpool(ctx.store.get, message_id)
    except NotFound:
        return page(request, "missing.html", {"id": message_id}, 404)
    allowed = OPERATOR_MOVES[name]
    return page(request, "confirm.html", {
        "info": info, "action": name, "button": ACTIONS[name][0], "effect": ACTIONS[name][1],
        "refused": None if info.status in allowed else
        f"It is {info.status.value}: only {', '.join(s.value for s in allowed)} messages can be."})


def _move(ctx: WebContext, message_id: str, name: str) -> str | None:
    """Make the move; None when made, else why not."""
    move, wakes = api.MOVES[name]
    try:
        ctx.store.get(message_id)
    except NotFound:
        return f"There is no message {message_id}."
    if not move(ctx.store, message_id, ctx.clock()):
        allowed = ", ".join(s.value for s in OPERATOR_MOVES[name])
        return f"Cannot {name} it: it is {ctx.store.get(message_id).status.value} (only {allowed} can be)."
    if wakes:
        ctx.wake()
    return None


async def act(request: Request) -> Response:
    target = _action(request)
    if target is None:
        return page(request, "missing.html", {"id": request.path_params["id"]}, 404)
    message_id, name = target
    why = await run_in_threadpool(_move, web_context(request), message_id, name)
    if why is not None:
        return page(request, "refused.html", {"id": message_id, "reason": why}, 409)
    return RedirectResponse(f"/messages/{quote(message_id, safe='')}?done={name}", 303)


async def action(request: Request) -> Response:
    return await (act if request.method == "POST" else confirm)(request)


routes: list[BaseRoute] = [
    Route("/", overview, methods=["GET"]),
    Route("/messages", messages, methods=["GET"]),
    Route("/messages/{id}", message, methods=["GET"]),
    Route("/messages/{id}/{action}", action, methods=["GET", "POST"]),  # one route: a 405 lists both
]
