"""Hourly roll-ups and the latency histogram, shared by every store engine.

Each outcome adds to a few counters per hour, written with the outcome, so
`stats` reads a few hundred rows whatever the store's size.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .model import Finished, Status

HOUR = 3600
LATENCY_BASE = 1.2  # latency histogram buckets grow by 20%: percentiles within ~10%
ROLLED = (Status.SENT, Status.FAILED, Status.EXPIRED)


def bucket(seconds: float) -> int:
    return int(math.log(max(seconds * 1000.0, 1.0), LATENCY_BASE))


def bucket_value(n: int) -> float:
    return LATENCY_BASE ** (n + 0.5) / 1000.0


class Rollup:
    """The counters one group of outcomes adds: (hour, kind, bucket) → n, and
    (hour, reason) → n. Rows come out sorted, so that two writers upserting
    the same rows take their locks in the same order."""

    def __init__(self) -> None:
        self.stats: Counter[tuple[int, str, int]] = Counter()
        self.reasons: Counter[tuple[int, str]] = Counter()

    def add(self, done: Finished, send_after: float) -> None:
        status = done.outcome.status
        if status not in ROLLED:
            return
        hour = int(done.attempt.at // HOUR)
        self.stats[hour, status.value, 0] += 1
        # Messages in a final state, by the hour they finished: `retry` takes one back out.
        self.stats[hour, f"done.{status.value}", 0] += 1
        if status is Status.SENT:
            self.stats[hour, "latency", bucket(done.attempt.at - send_after)] += 1
        elif done.outcome.reason:
            self.reasons[hour, done.outcome.reason[:200]] += 1

    def attempt(self, done: Finished) -> None:
        """Every attempt, whatever became of its message: `stats` counts attempts apart from messages."""
        self.stats[int(done.attempt.at // HOUR), f"attempt.{done.attempt.outcome}", 0] += 1

    def stat_rows(self) -> list[tuple[int, str, int, int]]:
        return sorted((*k, n) for k, n in self.stats.items())

    def reason_rows(self) -> list[tuple[int, str, int]]:
        return sorted((*k, n) for k, n in self.reasons.items())


def percentiles(histogram: Sequence[tuple[int, int]], wanted: Sequence[int]) -> dict[str, float | None]:
    total = sum(n for _, n in histogram)
    out: dict[str, float | None] = {}
    for p in wanted:
        if not total:
            out[f"p{p}"] = None
            continue
        rank, seen = math.ceil(total * p / 100), 0
        for b, n in histogram:
            seen += n
            if seen >= rank:
                out[f"p{p}"] = round(bucket_value(b), 4)
                break
    return out


def report(since: float, now: float, stat_rows: Iterable[tuple[str, int, int]],
           reason_rows: Iterable[tuple[str, int]], depth_rows: Iterable[tuple[int, int]]) -> dict[str, Any]:
    """`Store.stats` from the summed roll-ups: (kind, bucket, n), (reason, n), (hour, depth)."""
    totals = {k: 0 for k in ("sent", "failed", "expired")}
    attempts = {k: 0 for k in ("sent", "temporary", "permanent", "expired")}
    # Messages, not events: one retried and refused twice is one failed message, two attempts.
    messages = {k: 0 for k in ("sent", "failed", "expired")}
    histogram: list[tuple[int, int]] = []
    for kind, b, n in stat_rows:
        if kind == "latency":
            histogram.append((int(b), int(n)))
        elif kind.startswith("attempt."):
            attempts[kind[8:]] = attempts.get(kind[8:], 0) + int(n)
        elif kind.startswith("done."):
            messages[kind[5:]] = messages.get(kind[5:], 0) + int(n)
        else:
            totals[kind] = totals.get(kind, 0) + int(n)
    return {
        "since": since,
        "until": now,
        **totals,
        "messages": messages,
        "attempts": attempts,
        "latency": percentiles(sorted(histogram), (50, 95, 99)),
        "top_failures": [{"reason": r, "count": int(n)} for r, n in reason_rows],
        "depth_hourly": [{"hour": h * HOUR, "depth": int(d)} for h, d in depth_rows],
    }
