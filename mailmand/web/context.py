"""The one object every route gets: what the daemon lends the web app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..client import Client
from ..config import Config
from ..config.schema import WebConfig
from ..groupcommit import GroupCommit
from ..stores.base import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from starlette.requests import Request


@dataclass
class WebContext:
    """Settings, store, queue and clock for the routes. `cfg` is swapped on a reload
    (one assignment: a request sees the old or the new one whole)."""

    cfg: Config
    store: Store  # read through the contract; written only through the calls the CLI makes
    client: Client  # the queue, through the one door every producer uses
    clock: Callable[[], float]  # epoch seconds
    health: Callable[[], tuple[bool, dict[str, Any]]]  # /healthz: (ok, its JSON body), from memory
    wake: Callable[[], None] = lambda: None  # mail became due now (a retry, a release): dispatch at once
    daemon_id: str = ""
    commits: GroupCommit = field(init=False)

    def __post_init__(self) -> None:
        # Requests that arrive together share one queue write (one sync), as SMTP submissions do.
        self.commits = GroupCommit(self.client.put_many, "mailmand-web-put")

    @property
    def web(self) -> WebConfig:
        assert self.cfg.server.web is not None
        return self.cfg.server.web


def web_context(request: Request) -> WebContext:
    """The WebContext of the app serving `request` (what every route reads and writes through)."""
    ctx: WebContext = request.app.state.ctx
    return ctx
