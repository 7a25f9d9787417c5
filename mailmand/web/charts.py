"""Charts drawn on the server: the geometry of a stacked bar chart, which a
template turns into inline SVG (no script, no asset from elsewhere)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 560, 170  # the SVG's user units; CSS scales it to the page
LEFT, BOTTOM, TOP = 40, 22, 8  # room for the value axis, the time labels, the top tick


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str  # a CSS class: the series' colour
    title: str  # a tooltip: the step and its count


@dataclass(frozen=True)
class Tick:
    at: float  # x (time ticks) or y (value ticks)
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    left: int  # where the plot begins, right of the value axis
    bars: list[Bar]
    values: list[Tick]
    times: list[Tick]
    series: list[str]
    total: float
    empty: bool


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten at or above `value` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * power >= value:
            return float(m * power)
    return float(10 * power)


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def stacked(title: str, series: Mapping[str, Sequence[float]], labels: Sequence[str], every: int) -> Chart:
    """Bars of `series` (name: one value per step, all the same length) stacked per
    step, bottom to top in the dict's order; `labels[i]` names step i, and every
    `every`-th one is written under the axis."""
    steps = len(labels)
    totals = [sum(values[i] for values in series.values()) for i in range(steps)]
    top = nice_ceiling(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(steps, 1)
    gap = min(2.0, slot * 0.2)
    bars: list[Bar] = []
    for i in range(steps):
        base = 0.0
        for name, values in series.items():
            v = values[i]
            if v <= 0:
                continue
            h = v / top * plot_h
            y = TOP + plot_h - base - h
            bars.append(Bar(round(LEFT + i * slot + gap / 2, 2), round(y, 2), round(slot - gap, 2),
                            round(h, 2), name, f"{labels[i]}: {number(v)} {name}"))
            base += h
    ticks = [Tick(round(TOP + plot_h - f * plot_h, 2), number(top * f)) for f in (0, 0.5, 1)]
    times = [Tick(round(LEFT + i * slot + slot / 2, 2), labels[i]) for i in range(0, steps, max(every, 1))]
    return Chart(title, WIDTH, HEIGHT, LEFT, bars, ticks, times, list(series), sum(totals), not any(totals))
