"""The one ASGI app: the API v1, the dashboard, the login, /healthz, the package's assets."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import api, auth, dashboard
from .context import WebContext, web_context


async def healthz(request: Request) -> Response:
    """As the metrics listener's /healthz: 200 `ok`, or 503 with one line per failing part."""
    ok, reason = web_context(request).health()
    return PlainTextResponse(reason + "\n", 200 if ok else 503)


def build_app(ctx: WebContext) -> Starlette:
    guard = auth.Guard(ctx, ctx.clock)
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            *auth.routes,
            *api.routes,
            *dashboard.routes,
            Mount("/static", StaticFiles(packages=[("mailmand.web", "static")]), name="static"),
        ],
        middleware=[Middleware(auth.AuthMiddleware, guard=guard)],
        exception_handlers=dict(api.EXCEPTION_HANDLERS),
    )
    app.state.ctx = ctx
    app.state.guard = guard
    return app
