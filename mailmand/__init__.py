"""mailmand: a mail queue daemon. Applications enqueue; the daemon delivers."""

from __future__ import annotations

from .errors import InvalidMessage, MailmandError
from .version import __version__

TYPE_CHECKING = False  # typing itself is not imported: `import mailmand` stays cheap
if TYPE_CHECKING:
    from typing import Any

    from .client import Client
    from .message import Email
    from .raw import RawMessage

__all__ = ["Client", "Email", "InvalidMessage", "MailmandError", "RawMessage", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `mailmand status` does not pay for the email package at start-up.
    if name == "Client":
        from .client import Client

        return Client
    if name == "Email":
        from .message import Email

        return Email
    if name == "RawMessage":
        from .raw import RawMessage

        return RawMessage
    raise AttributeError(f"module 'mailmand' has no attribute {name!r}")
