"""Values written as text: durations, rates, sizes, listen addresses, mail
addresses and domains; and how an error message shows a value it refuses.

Each parser takes what YAML gave (a string or a number) and returns the
value, or raises ValueError with the one-line reason: `expected ..., got ...`.
"""

from __future__ import annotations

import math
import re

SECRET_KEYS = frozenset({"password", "dsn", "url", "secret", "key", "token"})  # keys whose text is never shown

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# The words people write on a command line (`--in 5 minutes`), each the same as its letter.
# (A configuration file keeps to the letters: one spelling per value.)
_DURATION_WORDS = {**dict.fromkeys(("sec", "secs", "second", "seconds"), "s"),
                   **dict.fromkeys(("min", "mins", "minute", "minutes"), "m"),
                   **dict.fromkeys(("hr", "hrs", "hour", "hours"), "h"),
                   **dict.fromkeys(("day", "days"), "d"), **dict.fromkeys(("week", "weeks"), "w")}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_WORD_PART = re.compile(r"(\d+(?:\.\d+)?)("
                                 + "|".join(sorted({*_DURATION_UNITS, *_DURATION_WORDS}, key=len, reverse=True))
                                 + ")")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_DURATION_HINT = "a duration such as 90s, 5m, 1h30m or 2d"


# Control characters as escapes, so that an error stays on one line.
_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def printable(text: str) -> str:
    return text.translate(_ESCAPES)


def show(value: object) -> str:
    """A value as an error message shows it: strings quoted, containers by kind."""
    if isinstance(value, str):
        return f'"{printable(value)}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return type(value).__name__


def kind(value: object) -> str:
    """A value's type only, for secrets whose text must not be shown."""
    if isinstance(value, (dict, list)):
        return show(value)
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    return names.get(type(value), type(value).__name__)


def parse_duration(value: object, words: bool = False) -> float:
    """Seconds from `90s`, `5m`, `1h30m`, `2d`, `1w`, `250ms`, or a plain number of seconds;
    with `words` (a command line), also `5 minutes`, `1 hour 30 min`, `2 days`."""
    seconds: float
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {_DURATION_HINT}, got {show(value)}")  # noqa: TRY004
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        text = text.lower() if words else text
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            body = text[1:] if text[:1] in "+-" else text
            parts = list((_DURATION_WORD_PART if words else _DURATION_PART).finditer(body))
            if not body or "".join(p.group(0) for p in parts) != body:
                raise ValueError(f"expected {_DURATION_HINT}, got {show(value)}")
            seconds = sum(float(p.group(1)) * _DURATION_UNITS[_DURATION_WORDS.get(p.group(2), p.group(2))]
                          for p in parts)
            if text.startswith("-"):
                seconds = -seconds
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"expected {_DURATION_HINT}, got {show(value)}")
    if seconds < 0:
        raise ValueError(f"expected a duration that is not negative, got {show(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as the file writes it: `1h`, `30d`, `1h30m`, `90s` (whole seconds; what parse_duration reads)."""
    left = max(0, round(seconds))
    if left == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts)


def format_rate(per_second: float) -> str:
    """A rate as the file writes it, in the unit that gives a whole number when one does: `14/s`, `30/m`, `500/h`."""
    for unit, size in (("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
        n = per_second * size
        if abs(n - round(n)) < 1e-6 * max(1.0, n) and round(n) >= 1:
            return f"{round(n)}/{unit}"
    return f"{per_second:.3g}/s"


_RATE_HINT = "a rate such as 10/s, 30/m, 500/h or 1000/d"


def parse_rate(value: object) -> float:
    """Messages per second from `10/s`, `30/m`, `500/h`, `1000/d`, `100/5m`, or a plain number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {_RATE_HINT}, got {show(value)}")  # noqa: TRY004
    count_text, _, per_text = str(value).replace(" ", "").partition("/")
    if not _NUMBER.fullmatch(count_text):
        raise ValueError(f"expected {_RATE_HINT}, got {show(value)}")
    try:  # `/s` means one second; `/5m` five minutes
        per = parse_duration(("1" + per_text if per_text[:1].isalpha() else per_text) if per_text else 1)
    except ValueError:
        raise ValueError(f"expected {_RATE_HINT}, got {show(value)}") from None
    count = float(count_text)
    if count <= 0 or per <= 0:
        raise ValueError(f"expected a rate above zero (omit the key for no limit), got {show(value)}")
    return count / per


_SIZE_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", start=1):
    # KB, MB are decimal; KiB, MiB binary; a bare K, M binary as in nginx and systemd
    _SIZE_UNITS |= {f"{_p}b": 1000**_i, f"{_p}ib": 1024**_i, f"{_p}i": 1024**_i, _p: 1024**_i}
_SIZE = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*([a-z]*)", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from an integer, `25MiB`, `10MB`, `512KiB`, `1G`."""
    hint = f"a size such as 25MiB, 10MB or 512KiB, got {show(value)}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected {hint}")  # noqa: TRY004
    m = _SIZE.fullmatch(str(value).strip())
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected {hint}")
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if size < 0:
        raise ValueError(f"expected a size that is not negative, got {show(value)}")
    return round(size)


_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


def parse_listen(value: object) -> str:
    """`host:port`, `[v6]:port`, or a bare port (then on loopback)."""
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    m = _LISTEN.fullmatch(text)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:2525 or [::1]:2525), got {show(value)}")
    return text


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` (as parse_listen returned it) -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True when every address the name stands for is a loopback one."""
    import ipaddress
    import socket

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def parse_network(value: object) -> str:
    """An address or a CIDR network, in its canonical form (`10.1.2.3/8` is `10.0.0.0/8`)."""
    import ipaddress

    text = value.strip() if isinstance(value, str) else ""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"expected an address or a network such as 10.0.0.0/8, got {show(value)}") from None


def parse_address(value: object) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", text):
        raise ValueError(f"expected an address such as ops@example.com, got {show(value)}")
    return text


def parse_url(value: object) -> str:
    """An `http://` or `https://` URL with a host (a webhook's)."""
    from urllib.parse import urlsplit  # here: producers never read one

    text = value.strip() if isinstance(value, str) else ""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or \
            any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("expected an http:// or https:// URL such as https://app.example.com/mail-events")
    return text


def mask_url(url: str) -> str:
    """A URL as logs, metrics and error messages show it: any password in it masked."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"


def parse_domain(value: object) -> str:
    text = value.strip().rstrip(".").lower() if isinstance(value, str) else ""
    if not re.fullmatch(rf"{_LABEL}(\.{_LABEL})*", text) or text == "localhost":
        raise ValueError(f"expected a domain such as example.com (not localhost), got {show(value)}")
    return text


# Lower case, as an unquoted name folds to: the app's own SQL (`CREATE TABLE
# mailmand_outbox`) and mailmand's quoted name then mean the same table.
# 63 bytes a part: PostgreSQL's NAMEDATALEN - 1.
_SQL_NAME = r"[a-z_][a-z0-9_]{0,62}"


def parse_sql_table(value: object) -> str:
    """A table name from the file: checked here, quoted (psycopg.sql) where it is used."""
    if not isinstance(value, str) or not re.fullmatch(rf"{_SQL_NAME}(\.{_SQL_NAME})?", value):
        raise ValueError("expected a table name such as mailmand_outbox or app.mailmand_outbox (lower-case "
                         f"letters, digits and _, up to 63 a name; optionally schema.table), got {show(value)}")
    return value


class Invalid(ValueError):
    """A value refused at `key` below the key being read (`.root`, `[2]`)."""

    def __init__(self, reason: str, key: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


def parse_aliases(value: object) -> dict[str, tuple[str, ...]]:
    """`{root: ops@example.com, default: [a@x, b@x]}`: a local name to one or more addresses."""
    if not isinstance(value, dict):
        raise Invalid(f"expected a mapping such as {{root: ops@example.com}}, got {show(value)}")
    out: dict[str, tuple[str, ...]] = {}
    for name, target in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
            raise Invalid("expected a local name (letters, digits, . _ + -)", f".{name}")
        targets = target if isinstance(target, list) else [target]
        if not targets:
            raise Invalid("expected at least one address", f".{name}")
        try:
            out[name.lower()] = tuple(parse_address(t) for t in targets)
        except ValueError as e:
            raise Invalid(str(e), f".{name}") from None
    return out
