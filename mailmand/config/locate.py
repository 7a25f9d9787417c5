"""Where the configuration file is: `-c`, `$MAILMAND_CONFIG`, `/etc/mailmand/`; and whether to trust it.

Apart from the loader so that a producer finds its file (and the cache of
its settings, `cache.py`) without importing YAML or msgspec.

Never the working directory: `mailmand-sendmail` runs from wherever its
caller stands (cron, a shared directory), and a `mailmand.yaml` someone else
left there could name their own spool, or alias root to their address.

A file is read only when it and every directory above it, up to `/`,
belong to this user or root and nobody else can write them: OpenSSH's
StrictModes rule for `authorized_keys`. Whoever could write any of them
could swap the file for one of their own. One difference: a directory that
others may write is accepted when it has the sticky bit (`/tmp`), since
there only an entry's owner can rename or remove it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mailmand.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/mailmand/mailmand.yaml")


def find_config_path(explicit: str | Path | None = None) -> Path | None:
    """`-c PATH`, else $MAILMAND_CONFIG, else /etc/mailmand/mailmand.yaml, else None;
    a ConfigError (exit 78) for a file this user must not trust."""
    for given, origin in ((explicit, "-c"), (os.environ.get("MAILMAND_CONFIG"), "$MAILMAND_CONFIG")):
        if given:  # named explicitly: it must exist
            path = Path(given).expanduser()
            if not path.is_file():
                raise ConfigError(f"configuration file {path} (from {origin}) does not exist")
            path = path.absolute()
            check_trusted(path)
            return path
    if SYSTEM_CONFIG.is_file():
        check_trusted(SYSTEM_CONFIG)
        return SYSTEM_CONFIG
    return None


def check_trusted(path: Path) -> None:
    """ConfigError naming the first of `path` and the directories above it (as
    written, and once symlinks are resolved) that another user could change."""
    uid = os.geteuid()
    real = Path(os.path.realpath(path))
    seen: set[Path] = set()
    # The file as resolved first (what is read), then the directories it was named through.
    for chain in ((real, *real.parents), path.parents):
        for part in chain:
            if part in seen:
                continue
            seen.add(part)
            try:
                st = os.stat(part)
            except OSError as exc:
                raise ConfigError(f"cannot check {part}: {exc.strerror or exc}") from None
            problem = _untrusted(st, uid)
            if problem:
                what = "configuration file" if part == real else "directory above the configuration file"
                raise ConfigError(f"refusing {path}: the {what} {part} {problem}")


def _untrusted(st: os.stat_result, uid: int) -> str | None:
    if st.st_uid not in (uid, 0):
        return (f"belongs to uid {st.st_uid}, not to this user ({uid}) or root: "
                "another user could change what mailmand does")
    if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        who = "every user" if st.st_mode & 0o002 else "its group"
        return f"can be written by {who} (mode {stat.S_IMODE(st.st_mode):o}): run chmod go-w on it"
    return None
