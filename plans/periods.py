"""Period arithmetic, in one place.

A subscription's period n runs from `anchor + n months` to `anchor + (n+1) months`, each computed
from the anchor (never chained), in the organization's time zone and converted back to UTC. So an
anchor of Jan 31 gives Feb 28 (or 29), then Mar 31; and a local-midnight anchor stays at local
midnight across DST changes.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta

from dateutil.relativedelta import relativedelta


def _zone(tz: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(tz or "UTC")


def period_start(*, anchor: datetime, index: int, months: int = 1, tz: str = "UTC") -> datetime:
    """Start of period `index` (0 is the anchor's own period), as an aware UTC datetime."""
    zone = _zone(tz)
    local_anchor = anchor.astimezone(zone).replace(tzinfo=None)
    local = local_anchor + relativedelta(months=index * months)
    # A wall-clock time that DST skips or repeats resolves with fold=0 (the earlier offset).
    return local.replace(tzinfo=zone).astimezone(UTC)


def period_index_at(*, anchor: datetime, at: datetime, months: int = 1, tz: str = "UTC") -> int:
    """Index of the period that contains `at` (negative before the anchor)."""
    zone = _zone(tz)
    local_anchor = anchor.astimezone(zone)
    local_at = at.astimezone(zone)
    # Estimate from the calendar, then correct by at most a step either way.
    guess = ((local_at.year - local_anchor.year) * 12 + (local_at.month - local_anchor.month)) // months
    while period_start(anchor=anchor, index=guess, months=months, tz=tz) > at:
        guess -= 1
    while period_start(anchor=anchor, index=guess + 1, months=months, tz=tz) <= at:
        guess += 1
    return guess


def period_bounds(*, anchor: datetime, at: datetime, months: int = 1, tz: str = "UTC") -> tuple[datetime, datetime]:
    """[start, end) of the period that contains `at`."""
    index = period_index_at(anchor=anchor, at=at, months=months, tz=tz)
    return (
        period_start(anchor=anchor, index=index, months=months, tz=tz),
        period_start(anchor=anchor, index=index + 1, months=months, tz=tz),
    )


def rolling_bounds(*, start: datetime, length: timedelta) -> tuple[datetime, datetime]:
    return start, start + length


def month_start(at: datetime) -> datetime:
    """First instant of `at`'s calendar month in UTC (the spend cap's month)."""
    at = at.astimezone(UTC)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
