"""The file watcher: a callback after the configuration file changes.

watchdog is imported when a watcher is made, not with this module: the
commands that never watch (every producer) skip its import.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent

log = logging.getLogger(__name__)


class ConfigWatcher:
    """Calls `callback()`, from its own thread, after the file at `path` changes.

    Watches the parent directory, not the file: editors save by writing a
    temporary file and renaming it over the original, or by deleting and
    recreating it, and a watch on the file itself dies with the old inode.
    Events within `delay` seconds of each other make one call.
    """

    def __init__(
        self, path: str | Path, callback: Callable[[], object], delay: float = 0.1
    ) -> None:
        self.path = Path(path).absolute()
        self.callback = callback
        self.delay = delay
        self._changed = threading.Event()
        self._stopping = False
        from watchdog.observers import Observer  # here: commands that never watch skip its import

        self._observer = Observer()
        self._thread = threading.Thread(
            target=self._run, name="mailmand-config-watcher", daemon=True
        )

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler

        handler = FileSystemEventHandler()
        handler.on_any_event = self._on_event  # type: ignore[method-assign]
        self._observer.schedule(handler, str(self.path.parent), recursive=False)
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()
        self._observer.stop()
        self._observer.join()
        self._thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def concerns(self, event: FileSystemEvent) -> bool:
        """True if `event` leaves new content at the watched path."""
        # a delete alone is not a change to act on: the recreate that follows is
        if event.is_directory or event.event_type not in ("modified", "created", "moved", "closed"):
            return False
        target = event.dest_path if event.event_type == "moved" else event.src_path
        return os.path.abspath(os.fsdecode(target)) == str(self.path)

    def _on_event(self, event: FileSystemEvent) -> None:
        if self.concerns(event):
            self._changed.set()

    def _run(self) -> None:
        while True:
            self._changed.wait()
            while not self._stopping:  # quiet for `delay` before calling
                self._changed.clear()
                if not self._changed.wait(self.delay):
                    break
            if self._stopping:
                return
            try:
                self.callback()
            except Exception:  # the watcher must outlive a failing callback
                log.exception("configuration reload callback failed")
