"""The name this host goes by in mail: the sendmail default domain and the EHLO name.

Relays refuse `EHLO localhost`, and mail to a bare `root` must not go to
`root@localhost`, so the answer is never `localhost`.
"""

from __future__ import annotations

import functools
import socket
from pathlib import Path

MAILNAME = Path("/etc/mailname")  # Debian's convention (postfix, exim, nullmailer read it)


def _usable(name: str) -> bool:
    name = name.strip().rstrip(".").lower()
    return bool(name) and name not in ("localhost", "localhost.localdomain") and not name.startswith("localhost.")


def pick(mailname: str | None, fqdn: str, host: str) -> str:
    """The first usable of /etc/mailname's first word, the FQDN and the hostname."""
    first = mailname.split() if mailname else []
    for name in [*first[:1], fqdn, host]:
        if _usable(name):
            return name.strip().rstrip(".").lower()
    return "mailmand.invalid"


@functools.cache
def mail_domain() -> str:
    """`/etc/mailname`, else the FQDN, else the hostname; never `localhost`.

    A host known only as localhost gets `mailmand.invalid` (RFC 6761 §6.4):
    a relay refuses it clearly instead of delivering to its own root. Set
    `email.sendmail.domain` or `email.server.smtp.helo` on such a host."""
    try:
        mailname: str | None = MAILNAME.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        mailname = None
    return pick(mailname, socket.getfqdn(), socket.gethostname())
