"""The HTTP API v1: JSON in and out, under /api/v1."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
