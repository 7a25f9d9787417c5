"""mailmand: a mail queue daemon. Applications enqueue; the daemon delivers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import InvalidMessage, MailmandError

if TYPE_CHECKING:
    from .client import Client
    from .message import Email

__version__ = "0.1.0"

__all__ = ["Client", "Email", "InvalidMessage", "MailmandError", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `mailmand status` does not pay for the email package at start-up.
    if name == "Client":
        from .client import Client

        return Client
    if name == "Email":
        from .message import Email

        return Email
    raise AttributeError(f"module 'mailmand' has no attribute {name!r}")
