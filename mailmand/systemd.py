"""The systemd side of process life: sd_notify(3) and the watchdog interval.

Named apart from notices.py (failure notices to senders): this module talks
only to the service manager.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """sd_notify(3): one datagram to $NOTIFY_SOCKET; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), addr)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False
    return True


def watchdog_interval() -> float:
    usec = os.environ.get("WATCHDOG_USEC")
    # In the one-file binary, systemd's main PID is PyInstaller's bootloader, our parent.
    ours = {str(os.getpid())} | ({str(os.getppid())} if getattr(sys, "frozen", False) else set())
    if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) not in ours:
        return 0.0
    return int(usec) / 2e6  # ping at half the timeout, as sd_watchdog_enabled(3) advises
