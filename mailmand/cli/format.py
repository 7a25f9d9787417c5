"""What people read: times, ages, tables and JSON.

Text shows local time with the zone offset; JSON keeps epoch seconds (as
`postqueue -j` does), so that scripts never parse a time zone.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


def when(ts: float | None) -> str:
    """Local time with the zone offset, `2026-11-30 06:01:02+01:00`; `-` for none."""
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().isoformat(sep=" ", timespec="seconds")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def recipients(rcpt: tuple[str, ...] | list[str]) -> str:
    """The first recipient, then `+N` for the others."""
    if not rcpt:
        return "-"
    return rcpt[0] if len(rcpt) == 1 else f"{rcpt[0]} +{len(rcpt) - 1}"


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: frozenset[int] = frozenset()) -> None:
    """Columns as wide as their widest cell; the last column is not padded."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        cells[-1] = row[-1]
        print("  ".join(cells).rstrip())

