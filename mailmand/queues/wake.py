"""The spool's wake-up: how the daemon learns that a producer wrote the spool.

On Linux the ingest thread itself waits on an inotify descriptor (through
inotify_simple) and on a pipe that `wake()` writes: a producer's write ends
the wait with no thread in between. watchdog's observer, used elsewhere,
passes each event through three threads of its own (reader, emitter,
dispatcher); at 200 messages a second that was a quarter of the daemon's
time holding the GIL, and a hand-off between threads on every message's
path (measured: docs/performance.md). watchdog stays the fallback where
inotify is not available.
"""

from __future__ import annotations

import os
import select
import threading
from pathlib import Path
from typing import Any, Protocol


class Wake(Protocol):
    def wait(self, timeout: float) -> bool:
        """Until the directory is written or `wake()` is called (True), or `timeout` seconds pass (False)."""

    def wake(self) -> None:
        """End a `wait()` now (from any thread)."""

    def close(self) -> None: ...


def watch(path: Path) -> Wake:
    """A wake-up on writes to files in `path` (not in its subdirectories)."""
    try:
        return InotifyWake(path)
    except (ImportError, OSError):  # not Linux, or no inotify instance left: watchdog chooses what works
        return WatchdogWake(path)


class InotifyWake:
    def __init__(self, path: Path) -> None:
        from inotify_simple import INotify, flags

        self._isdir = flags.ISDIR
        self._inotify = INotify(nonblocking=True)
        try:
            # A commit writes the WAL (modified), or creates it, or a file is moved in.
            # Opens, reads, closes and attribute changes are not news.
            self._inotify.add_watch(path, flags.MODIFY | flags.CREATE | flags.MOVED_TO)
            self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            self._inotify.close()
            raise
        self._poll = select.poll()
        self._poll.register(self._inotify.fileno(), select.POLLIN)
        self._poll.register(self._r, select.POLLIN)

    def wait(self, timeout: float) -> bool:
        woken = False
        for fd, _ in self._poll.poll(max(0.0, timeout * 1000)):  # ms, rounded up
            if fd == self._r:
                while _drain(self._r):
                    pass
                woken = True
            else:
                woken = any(not event.mask & self._isdir for event in self._inotify.read(timeout=0)) or woken
        return woken

    def wake(self) -> None:
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def close(self) -> None:
        self._inotify.close()
        os.close(self._r)
        os.close(self._w)


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return False


class WatchdogWake:
    def __init__(self, path: Path) -> None:
        from watchdog.observers import Observer

        self._event = threading.Event()
        handler: Any = _Handler(self._event)  # duck-typed: watchdog calls only its `dispatch`
        self._observer = Observer()
        self._observer.schedule(handler, str(path), recursive=False)
        self._observer.start()

    def wait(self, timeout: float) -> bool:
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def wake(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)


class _Handler:
    """watchdog handler: sets an event when a producer's commit writes the spool."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def dispatch(self, event: Any) -> None:
        if not event.is_directory and event.event_type in ("modified", "created", "moved"):
            self.event.set()
