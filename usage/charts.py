"""Server-side SVG geometry for the usage page's daily bar charts (no JavaScript, no library)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from usage.rollups import DayRow

WIDTH = 560
HEIGHT = 210
LEFT = 48  # room for the y-axis labels
RIGHT = 8
TOP = 12
BOTTOM = 28  # room for the x-axis labels


@dataclass(frozen=True, slots=True)
class Bar:
    row: DayRow
    x: float
    width: float
    included_y: float
    included_h: float
    credits_y: float
    credits_h: float


@dataclass(frozen=True, slots=True)
class Tick:
    value: Decimal
    y: float


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: int
    right_edge: int
    baseline: float
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[tuple[float, DayRow]]  # x (centre) and the day, every 7th day
    total: Decimal
    peak: Decimal


def nice_ceiling(value: Decimal) -> Decimal:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= value (1 for zero)."""
    if value <= 0:
        return Decimal(1)
    exponent = value.adjusted()
    for base in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10)):
        candidate = base.scaleb(exponent)
        if candidate >= value:
            return candidate.normalize() if candidate == candidate.to_integral() else candidate
    return Decimal(10).scaleb(exponent)


def daily_chart(rows: list[DayRow]) -> Chart:
    peak = max((r.quantity for r in rows), default=Decimal(0))
    top = nice_ceiling(peak)
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    baseline = float(TOP + plot_h)
    slot = plot_w / max(len(rows), 1)
    gap = min(4.0, slot * 0.2)
    bars = []
    labels = []
    for i, row in enumerate(rows):
        x = LEFT + i * slot + gap / 2
        included_h = float(row.from_allowance / top) * plot_h
        credits_h = float(row.from_credits / top) * plot_h
        bars.append(
            Bar(
                row=row,
                x=round(x, 2),
                width=round(slot - gap, 2),
                included_y=round(baseline - included_h, 2),
                included_h=round(included_h, 2),
                credits_y=round(baseline - included_h - credits_h, 2),
                credits_h=round(credits_h, 2),
            )
        )
        if (len(rows) - 1 - i) % 7 == 0:
            labels.append((round(x + (slot - gap) / 2, 2), row))
    ticks = [Tick(value=top * Decimal(n) / 2, y=round(baseline - plot_h * n / 2, 2)) for n in range(3)]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right_edge=WIDTH - RIGHT,
        baseline=baseline,
        bars=bars,
        ticks=ticks,
        labels=labels,
        total=sum((r.quantity for r in rows), Decimal(0)),
        peak=peak,
    )
