"""The one ASGI app: the API v1, the dashboard, the login, /healthz, the package's assets."""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import api, auth, dashboard
from .context import WebContext, web_context


async def healthz(request: Request) -> Response:
    """The metrics listener's /healthz, byte for byte: 200, or 503 with each failing part; JSON."""
    ok, report = web_context(request).health()
    return Response(json.dumps(report, separators=(",", ":")) + "\n", 200 if ok else 503,
                    media_type="application/json")


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
