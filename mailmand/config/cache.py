"""The producers' settings, cached: `sendmail` and the client start without YAML or msgspec.

`mailmand-sendmail` runs once per message, and the full loader (PyYAML,
msgspec and the schema's classes) is a large part of what a short process
costs. After a load that succeeded, `load_producer` writes what a producer
sees of the configuration to a cache file; the next producer reads it back
with `marshal` (built into the interpreter) instead of parsing the file.

What keys an entry, so that any change makes the full loader run again (and
say what is wrong, with the same message and exit code as ever):
- the file: its path, device, inode, size, mtime and ctime (ctime moves on
  every write, chmod, chown and `touch -d`, and cannot be set back);
- the environment: the values of every `${NAME}` the producer's part of the
  file refers to, and HOME and XDG_DATA_HOME (defaults, `~` in paths);
- the files the configuration names (a CA bundle, a certificate): they must
  still exist, as the loader checks;
- mailmand's version and build, and the loader's own source files.

A file changed twice within one tick of the file system's clock (a few ms;
a second on some file systems) could keep its size and times: an entry is
written only for a file last changed more than `SETTLE` seconds before
(git's "racy" rule); a file just written is loaded in full until then.

Security:
- an entry never holds a secret: a configuration whose producer view has one
  (a Redis password or URL) is not cached, and the daemon's secrets (AUTH
  passwords, the database DSN) are never part of a producer's view;
- an entry is opened without following a symlink and without blocking (a
  FIFO planted at its name would hang the open), then read only if the open
  file is a regular file of this user's, with one link, that nobody else can
  write; anything else is ignored, as if there were no entry. Each user has
  its own entry (the uid is in its name): whoever else can write the
  directory (the mailmand group, in /var/cache/mailmand) cannot feed this
  user settings (a spool, an alias that redirects root's mail);
- the shared directory is sticky (3770): a member can neither remove nor
  rename another member's entry. At worst a member can squat the name of
  another's entry that does not exist yet, and that user then reads the
  file in full each time: slower, never wrong;
- entries are written 0600 to a temporary file and renamed into place.

Where: $MAILMAND_CACHE_DIR (empty or `none`: no cache); else
/var/cache/mailmand when it exists (the .deb makes it, 3770 root:mailmand,
so the daemon's group, PHP's www-data among them, can write it); else
$XDG_CACHE_HOME/mailmand, or ~/.cache/mailmand when the home directory is
this user's (a service user's home that is not, such as www-data's /var/www,
is left alone). Nothing writable: no cache, only slower.
"""

from __future__ import annotations

import marshal
import os
import sys
import time
from pathlib import Path

from ..version import __version__
from .locate import find_config_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .schema import Config

FORMAT = 1
SETTLE = 1.0  # seconds: a file changed more recently than this is not cached (see above)
SYSTEM_DIR = "/var/cache/mailmand"
ENV_ALWAYS = ("HOME", "XDG_DATA_HOME")
# The loader's sources: an entry from another version of them is not trusted.
_SOURCES = ("cache.py", "loader.py", "schema.py", "values.py", "explain.py", "locate.py")
_SECTION, _PATH = "\0section", "\0path"


class Uncacheable(Exception):
    """This configuration's producer view holds something an entry must not (a secret)."""


def load_producer(path: str | Path | None = None) -> Config:
    """`load(path, producer=True)`, read from the cache when nothing the load
    read has changed. The result has a Config's attributes; when it comes from
    the cache it is a tree of read-only `CachedSection`s, not msgspec Structs
    (so msgspec's `replace` does not take it; the daemon never gets one)."""
    found = find_config_path(path)  # a missing -c file: the loader's own error
    where = cache_file(found)
    if where is not None:
        entry = _read(where)
        if entry is not None and entry.get("key") == _key(found) and _fresh(entry):
            return _rebuild(entry["config"])  # type: ignore[no-any-return]
    from .loader import load

    before = _stat(found)
    cfg = load(path, producer=True)
    if where is not None:
        try:
            _write(where, found, before, cfg)
        except (Uncacheable, OSError, ValueError):
            pass  # no entry: the next call loads the file again
    return cfg


# -- where ---------------------------------------------------------------------


def cache_dir() -> str | None:
    given = os.environ.get("MAILMAND_CACHE_DIR")
    if given is not None:
        return None if given in ("", "none") else given
    if os.path.isdir(SYSTEM_DIR):
        return SYSTEM_DIR
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "mailmand")
    home = os.path.expanduser("~")
    try:
        if os.path.isabs(home) and os.stat(home).st_uid == os.geteuid():
            return os.path.join(home, ".cache", "mailmand")
    except OSError:
        pass
    return None  # a home that is not ours (www-data's /var/www is root's): no cache


def cache_file(found: Path | None) -> str | None:
    """This user's entry for this configuration file (None: the embedded defaults)."""
    where = cache_dir()
    if where is None:
        return None
    from binascii import crc32  # a short, stable name; the entry's key holds the path itself

    # One entry per configuration file and per installation (a venv and the
    # .deb on one host would otherwise take turns invalidating one entry). The
    # installation is sys.prefix, not sys.executable: pip's scripts start
    # `python3`, an application `python`, and each name had an entry of its own
    # that the other never read.
    tag = crc32(str(found).encode("utf-8", "surrogateescape"))
    build = crc32(repr((_code(), sys.prefix, sys.version)).encode("utf-8", "surrogateescape"))
    return os.path.join(where, f"producer-{os.geteuid()}-{tag:08x}-{build:08x}.marshal")


# -- the key -------------------------------------------------------------------


def _stat(found: Path | None) -> tuple[int, ...] | None:
    if found is None:
        return None
    st = os.stat(found)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_CODE: tuple[object, ...] | None = None


def _code() -> tuple[object, ...]:
    """What stands for the loader's code: version, build, its sources' stamps (once per process)."""
    global _CODE
    if _CODE is None:
        _CODE = _stamp()
    return _CODE


def _stamp() -> tuple[object, ...]:
    try:
        from mailmand._build import COMMIT  # a PyInstaller build: the commit it was made from
    except ImportError:
        COMMIT = "source"
    here = os.path.dirname(__file__)
    stamps: list[object] = []
    for name in _SOURCES:
        try:
            st = os.stat(os.path.join(here, name))
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append(None)  # frozen into a build: the commit stands for them
    return (FORMAT, __version__, COMMIT, *stamps)


def _key(found: Path | None) -> tuple[object, ...]:
    try:
        stat = _stat(found)
    except OSError:
        stat = None
    return (_code(), str(found), stat, tuple(os.environ.get(name) for name in ENV_ALWAYS))


def _fresh(entry: dict[str, Any]) -> bool:
    """The rest of the key: the referenced variables, and the named files still there."""
    names, values = entry.get("names"), entry.get("env")
    if not isinstance(names, list) or values != [os.environ.get(n) for n in names]:
        return False
    files = entry.get("files")
    return isinstance(files, list) and all(os.path.isfile(f) for f in files)


# -- reading and writing ---------------------------------------------------------


def _read(where: str) -> dict[str, Any] | None:
    """The entry, if it is a regular file of ours, with one link, that nobody else can write."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not _private(st):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        entry = marshal.loads(b"".join(chunks))
    except (EOFError, ValueError, TypeError):
        return None
    return entry if isinstance(entry, dict) else None


def _private(st: os.stat_result) -> bool:
    """A regular file, this user's, one link (not a hard link to a file planted elsewhere), mode 0600 or less."""
    return (st.st_mode & 0o170000) == 0o100000 and st.st_uid == os.geteuid() and st.st_nlink == 1 \
        and not st.st_mode & 0o077


def _write(where: str, found: Path | None, before: tuple[int, ...] | None, cfg: Config) -> None:
    if found is not None:
        now = _stat(found)
        if now != before:
            return  # changed while we read it
        st = os.stat(found)
        if time.time() - max(st.st_mtime, st.st_ctime) < SETTLE:
            return  # too fresh: a change within the same clock tick would go unseen
    files: list[str] = []
    tree = _dump(cfg, files)
    names = sorted(_referenced(found)) if found is not None else []
    entry = {"key": _key(found), "names": names, "env": [os.environ.get(n) for n in names],
             "files": files, "config": tree}
    data = marshal.dumps(entry)
    directory = os.path.dirname(where)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{where}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, where)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _referenced(found: Path) -> set[str]:
    """The `${NAME}`s in the part of the file a producer reads (not in the daemon's secrets)."""
    import re

    from .loader import drop_daemon_secrets, read_yaml

    ref = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")

    data = read_yaml(found.read_text(encoding="utf-8"), found)
    drop_daemon_secrets(data)
    names: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, str):
            names.update(ref.findall(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(data)
    return names


# -- the configuration as plain data -----------------------------------------------


def _dump(value: Any, files: list[str]) -> Any:
    """A Config as marshal-able data: sections tagged with their class, paths
    tagged, the files the loader checks noted in `files`. Raises Uncacheable
    on a secret."""
    from .schema import File

    fields = getattr(type(value), "__struct_fields__", None)
    if fields is not None:
        cls = type(value)
        out: dict[str, Any] = {_SECTION: cls.__name__}
        for name in fields:
            v = getattr(value, name)
            if name in getattr(cls, "secret_fields", ()) and v is not None:
                raise Uncacheable(f"{cls.__name__}.{name}")
            out[name] = _dump(v, files)
        for name in dir(cls):  # computed attributes (SmtpConfig.relay)
            if isinstance(getattr(cls, name, None), property):
                out[name] = _dump(getattr(value, name), files)
        return out
    if isinstance(value, Path):
        if isinstance(value, File):
            files.append(str(value))
        return {_PATH: str(value)}
    if value is None or isinstance(value, bool):
        return value
    for plain in (str, int, float):
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, tuple):
        return tuple(_dump(v, files) for v in value)
    if isinstance(value, list):
        return [_dump(v, files) for v in value]
    if isinstance(value, dict):
        return {str(k): _dump(v, files) for k, v in value.items()}
    raise Uncacheable(type(value).__name__)


def _rebuild(value: Any) -> Any:
    if isinstance(value, dict):
        if _PATH in value:
            return Path(value[_PATH])
        kind = value.get(_SECTION)
        items = {k: _rebuild(v) for k, v in value.items() if k != _SECTION}
        return items if kind is None else CachedSection(kind, items)
    if isinstance(value, tuple):
        return tuple(_rebuild(v) for v in value)
    if isinstance(value, list):
        return [_rebuild(v) for v in value]
    return value


class CachedSection:
    """A section of the configuration read back from the cache: its keys as
    read-only attributes, as the section's Struct has them."""

    _kind: str

    def __init__(self, kind: str, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)
        self.__dict__["_kind"] = kind

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self._kind} is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CachedSection) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "_kind")
        return f"{self._kind}({shown})"
