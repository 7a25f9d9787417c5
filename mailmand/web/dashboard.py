"""The dashboard's pages (HTML, from templates/; assets from static/)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..version import __version__
from .render import templates


async def overview(request: Request) -> Response:
    return templates.TemplateResponse(request, "overview.html", {"version": __version__})


routes = [Route("/", overview, methods=["GET"])]
