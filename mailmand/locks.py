"""The single-instance lock: an flock on a file that holds the holder's pid.

The daemon takes one on its spool (one daemon per spool) and one beside a
store only one daemon may use (SQLite); `migrate` takes the store's to copy
it while no daemon runs. Commands read a lock without taking it (`holder`).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import AlreadyRunning

LOCK_MODE = 0o640  # a lock file holds a pid: not for every local user


class InstanceLock:
    """An flock that makes a daemon the only one on a spool (or a store). The
    kernel drops it when the process dies, so a SIGKILLed daemon never leaves
    a stale lock."""

    def __init__(self, path: Path, what: str, dir_mode: int | None = None) -> None:
        self.path = path
        self.what = what
        self.dir_mode = dir_mode  # the mode of a directory this lock creates (None: the umask's)
        self._fd: int | None = None
        self._made: list[Path] = []  # what acquire() created, removed by discard()

    def acquire(self) -> None:
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.dir_mode is not None and missing:
            os.chmod(self.path.parent, self.dir_mode)
        existed = self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
        self._made = ([] if existed else [self.path]) + missing
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AlreadyRunning(f"another mailmand daemon (pid {holder}) is already running on {self.what}") from None
        os.fchmod(fd, LOCK_MODE)  # an older, world-readable lock file too
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as exc:  # a full disk: the flock is what counts, the pid is a courtesy
            if exc.errno != errno.ENOSPC:
                os.close(fd)
                raise
            import logging  # (here: commands read locks, and never log)

            logging.getLogger(__name__).warning("%s: no space to record the pid; the lock holds all the same",
                                                self.path)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Release, and remove what acquire() created: a refused start leaves nothing behind."""
        self.release()
        for p in self._made:
            try:
                p.rmdir() if p.is_dir() else p.unlink()
            except OSError:
                pass  # not empty, or gone: leave it


def holder(path: Path) -> int | None:
    """The pid of the process holding the lock at `path`, or None. Reads the
    file without creating it; a held flock means a live holder (the kernel
    drops it when the process dies, so a stale file says nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        except OSError:
            return None
        return None  # we got the lock: nobody holds it
    finally:
        os.close(fd)  # drops our shared lock, if we took it
