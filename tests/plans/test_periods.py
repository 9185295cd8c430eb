"""plans/periods.py: periods computed from the anchor, month ends, leap years, DST, multi-month."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest

from plans.periods import month_start, period_bounds, period_index_at, period_start, rolling_bounds


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


US = timedelta(microseconds=1)


# Month ends -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (0, utc(2026, 1, 31, 10)),
        (1, utc(2026, 2, 28, 10)),
        (2, utc(2026, 3, 31, 10)),  # back to the 31st: computed from the anchor, not from Feb 28
        (3, utc(2026, 4, 30, 10)),
        (4, utc(2026, 5, 31, 10)),
        (12, utc(2027, 1, 31, 10)),
        (13, utc(2027, 2, 28, 10)),
        (-1, utc(2025, 12, 31, 10)),
        (-2, utc(2025, 11, 30, 10)),
    ],
)
def test_month_end_anchor_is_computed_from_the_anchor_never_chained(index, expected):
    # Given an anchor on Jan 31, when period `index` starts, then it is the anchor's day clipped to the month.
    assert period_start(anchor=utc(2026, 1, 31, 10), index=index) == expected


@pytest.mark.parametrize(
    ("anchor", "index", "expected"),
    [
        (utc(2028, 1, 31, 10), 1, utc(2028, 2, 29, 10)),  # leap year: Feb 29
        (utc(2028, 1, 31, 10), 2, utc(2028, 3, 31, 10)),
        (utc(2028, 1, 30, 10), 1, utc(2028, 2, 29, 10)),
        (utc(2028, 1, 29, 10), 1, utc(2028, 2, 29, 10)),
        (utc(2028, 2, 29, 10), 1, utc(2028, 3, 29, 10)),
        (utc(2028, 2, 29, 10), 12, utc(2029, 2, 28, 10)),
        (utc(2028, 2, 29, 10), 48, utc(2032, 2, 29, 10)),
        (utc(2029, 1, 29, 10), 1, utc(2029, 2, 28, 10)),  # not a leap year
    ],
)
def test_leap_years(anchor, index, expected):
    assert period_start(anchor=anchor, index=index) == expected


def test_period_index_at_before_at_and_after_boundaries():
    anchor = utc(2026, 1, 31, 10)
    # Given the anchor's own period [Jan 31 10:00, Feb 28 10:00)
    assert period_index_at(anchor=anchor, at=anchor) == 0
    assert period_index_at(anchor=anchor, at=utc(2026, 2, 28, 10) - US) == 0
    # At the boundary the next period has begun
    assert period_index_at(anchor=anchor, at=utc(2026, 2, 28, 10)) == 1
    assert period_index_at(anchor=anchor, at=utc(2026, 3, 31, 10) - US) == 1
    assert period_index_at(anchor=anchor, at=utc(2026, 3, 31, 10)) == 2
    # Before the anchor: negative indexes
    assert period_index_at(anchor=anchor, at=anchor - US) == -1
    assert period_index_at(anchor=anchor, at=utc(2025, 12, 31, 10)) == -1
    assert period_index_at(anchor=anchor, at=utc(2025, 12, 31, 10) - US) == -2
    # Far away (the calendar guess needs a correction for a day-of-month earlier than the anchor's)
    assert period_index_at(anchor=anchor, at=utc(2027, 3, 1)) == 13
    assert period_index_at(anchor=anchor, at=utc(2027, 3, 31, 9, 59)) == 13
    assert period_index_at(anchor=anchor, at=utc(2027, 3, 31, 10)) == 14


def test_period_bounds_contain_at_and_are_half_open():
    anchor = utc(2026, 1, 31, 10)
    assert period_bounds(anchor=anchor, at=utc(2026, 2, 15)) == (utc(2026, 1, 31, 10), utc(2026, 2, 28, 10))
    assert period_bounds(anchor=anchor, at=utc(2026, 2, 28, 10)) == (utc(2026, 2, 28, 10), utc(2026, 3, 31, 10))
    assert period_bounds(anchor=anchor, at=utc(2026, 2, 28, 10) - US) == (utc(2026, 1, 31, 10), utc(2026, 2, 28, 10))


# Multi-month periods ----------------------------------------------------------------------------


def test_quarterly_periods_from_a_month_end_anchor():
    anchor = utc(2026, 1, 31, 10)
    starts = [period_start(anchor=anchor, index=i, months=3) for i in range(5)]
    assert starts == [
        utc(2026, 1, 31, 10),
        utc(2026, 4, 30, 10),
        utc(2026, 7, 31, 10),
        utc(2026, 10, 31, 10),
        utc(2027, 1, 31, 10),
    ]
    assert period_index_at(anchor=anchor, at=utc(2026, 4, 30, 10) - US, months=3) == 0
    assert period_index_at(anchor=anchor, at=utc(2026, 4, 30, 10), months=3) == 1
    assert period_index_at(anchor=anchor, at=utc(2026, 7, 31, 9), months=3) == 1
    assert period_index_at(anchor=anchor, at=utc(2026, 12, 1), months=3) == 3
    assert period_index_at(anchor=anchor, at=utc(2025, 12, 1), months=3) == -1
    assert period_bounds(anchor=anchor, at=utc(2026, 5, 1), months=3) == (utc(2026, 4, 30, 10), utc(2026, 7, 31, 10))


def test_yearly_periods_from_a_leap_day():
    anchor = utc(2028, 2, 29)
    assert period_start(anchor=anchor, index=1, months=12) == utc(2029, 2, 28)
    assert period_start(anchor=anchor, index=4, months=12) == utc(2032, 2, 29)
    assert period_index_at(anchor=anchor, at=utc(2029, 2, 28) - US, months=12) == 0
    assert period_index_at(anchor=anchor, at=utc(2029, 2, 28), months=12) == 1
    assert period_bounds(anchor=anchor, at=utc(2031, 6, 1), months=12) == (utc(2031, 2, 28), utc(2032, 2, 29))


# DST ------------------------------------------------------------------------------------------


def test_new_york_local_midnight_stays_midnight_across_dst():
    # Given an anchor at local midnight on Jan 1 2026 in New York (EST, UTC-5)
    tz = "America/New_York"
    anchor = utc(2026, 1, 1, 5)
    # When the periods cross DST (starts Mar 8, ends Nov 1 2026)
    starts = {i: period_start(anchor=anchor, index=i, tz=tz) for i in (1, 2, 3, 9, 10, 11, 12)}
    # Then each starts at 00:00 local: 05:00Z in winter, 04:00Z in summer
    assert starts == {
        1: utc(2026, 2, 1, 5),
        2: utc(2026, 3, 1, 5),
        3: utc(2026, 4, 1, 4),
        9: utc(2026, 10, 1, 4),
        10: utc(2026, 11, 1, 4),  # DST ends at 02:00 on Nov 1, so midnight is still EDT
        11: utc(2026, 12, 1, 5),
        12: utc(2027, 1, 1, 5),
    }
    assert period_index_at(anchor=anchor, at=utc(2026, 4, 1, 4) - US, tz=tz) == 2
    assert period_index_at(anchor=anchor, at=utc(2026, 4, 1, 4), tz=tz) == 3
    assert period_bounds(anchor=anchor, at=utc(2026, 3, 15), tz=tz) == (utc(2026, 3, 1, 5), utc(2026, 4, 1, 4))
    # A period that contains the change is one hour shorter than its wall-clock length
    start, end = period_bounds(anchor=anchor, at=utc(2026, 3, 15), tz=tz)
    assert end - start == timedelta(days=31, hours=-1)


def test_paris_local_midnight_stays_midnight_across_dst():
    # Given an anchor at local midnight on Jan 1 2026 in Paris (CET, UTC+1)
    tz = "Europe/Paris"
    anchor = utc(2025, 12, 31, 23)
    # When the periods cross DST (starts Mar 29, ends Oct 25 2026)
    starts = [period_start(anchor=anchor, index=i, tz=tz) for i in range(13)]
    # Then each starts at 00:00 local: 23:00Z the day before in winter, 22:00Z in summer
    assert starts == [
        utc(2025, 12, 31, 23),
        utc(2026, 1, 31, 23),
        utc(2026, 2, 28, 23),
        utc(2026, 3, 31, 22),
        utc(2026, 4, 30, 22),
        utc(2026, 5, 31, 22),
        utc(2026, 6, 30, 22),
        utc(2026, 7, 31, 22),
        utc(2026, 8, 31, 22),
        utc(2026, 9, 30, 22),
        utc(2026, 10, 31, 23),
        utc(2026, 11, 30, 23),
        utc(2026, 12, 31, 23),
    ]
    assert period_index_at(anchor=anchor, at=utc(2026, 3, 31, 22) - US, tz=tz) == 2
    assert period_index_at(anchor=anchor, at=utc(2026, 3, 31, 22), tz=tz) == 3
    # 23:00Z on Mar 31 is already 01:00 local on Apr 1: inside period 3, not its start
    assert period_index_at(anchor=anchor, at=utc(2026, 3, 31, 23), tz=tz) == 3
    assert period_bounds(anchor=anchor, at=utc(2026, 10, 31, 22, 30), tz=tz) == (
        utc(2026, 9, 30, 22),
        utc(2026, 10, 31, 23),
    )


def test_anchor_on_the_day_dst_starts_keeps_its_wall_clock_time():
    # Given a New York anchor at local midnight on Mar 8 2026, the day DST starts (EST, 05:00Z)
    tz = "America/New_York"
    anchor = utc(2026, 3, 8, 5)
    # Then the next period starts at local midnight on Apr 8 (EDT, 04:00Z), not 05:00Z
    assert period_start(anchor=anchor, index=1, tz=tz) == utc(2026, 4, 8, 4)
    assert period_start(anchor=anchor, index=-1, tz=tz) == utc(2026, 2, 8, 5)
    assert period_index_at(anchor=anchor, at=utc(2026, 4, 8, 4) - US, tz=tz) == 0
    assert period_index_at(anchor=anchor, at=utc(2026, 4, 8, 4), tz=tz) == 1


def test_a_wall_clock_time_that_dst_skips_resolves_to_the_earlier_offset():
    # Given an anchor at 02:30 local on Feb 8 2026 in New York (07:30Z); 02:30 does not exist on Mar 8
    tz = "America/New_York"
    anchor = utc(2026, 2, 8, 7, 30)
    # Then that period starts at 02:30 with the pre-transition offset (EST): 07:30Z = 03:30 EDT
    assert period_start(anchor=anchor, index=1, tz=tz) == utc(2026, 3, 8, 7, 30)
    assert period_start(anchor=anchor, index=2, tz=tz) == utc(2026, 4, 8, 6, 30)


def test_utc_and_empty_time_zone_are_the_same():
    anchor = utc(2026, 1, 31, 10)
    assert period_start(anchor=anchor, index=1, tz="") == period_start(anchor=anchor, index=1, tz="UTC")
    assert period_start(anchor=anchor, index=1, tz="") == utc(2026, 2, 28, 10)


# Small helpers --------------------------------------------------------------------------------


def test_rolling_bounds_and_month_start():
    assert rolling_bounds(start=utc(2026, 1, 15, 12), length=timedelta(hours=5)) == (
        utc(2026, 1, 15, 12),
        utc(2026, 1, 15, 17),
    )
    assert month_start(utc(2026, 2, 28, 23, 59, 59)) == utc(2026, 2, 1)
    # A non-UTC instant is taken in UTC: 00:30 on Mar 1 in Paris is still February in UTC
    paris = datetime(2026, 3, 1, 0, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    assert month_start(paris) == utc(2026, 2, 1)
