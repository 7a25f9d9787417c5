"""mailmand: a mail queue daemon. Applications enqueue; the daemon delivers."""

from .client import Client
from .errors import InvalidMessage, MailmandError
from .message import Email

__version__ = "0.1.0"

__all__ = ["Client", "Email", "InvalidMessage", "MailmandError", "__version__"]
