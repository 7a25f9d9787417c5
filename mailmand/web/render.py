"""The pages' template engine: Jinja2 over the package's own templates, every value escaped."""

from __future__ import annotations

from typing import Any

import jinja2
from starlette.requests import Request
from starlette.templating import Jinja2Templates


def _page_state(request: Request) -> dict[str, Any]:
    """What every page may use: the CSRF token its forms carry, and how the user is logged in."""
    return {"csrf": getattr(request.state, "csrf", None), "auth": getattr(request.state, "auth", None)}


# PackageLoader reads from the installed package (a wheel, a PyInstaller bundle): no path to find.
templates = Jinja2Templates(
    env=jinja2.Environment(loader=jinja2.PackageLoader("mailmand.web", "templates"), autoescape=True,
                           undefined=jinja2.StrictUndefined),
    context_processors=[_page_state],
)
