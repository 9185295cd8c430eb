"""Daily usage rollups: what the dashboard's charts read instead of scanning events.

`daily_usage_rollup` adds every event with id above a stored watermark into DailyUsage rows
(organization, meter, day in the organization's time zone), then moves the watermark, all in one
transaction that holds the cursor row's lock. So it is idempotent: run twice, the second run finds
nothing new; run concurrently, the second waits and then finds nothing new; not run for a day, the
next run catches up.

Event ids are assigned at insert, not at commit, so a slow transaction could commit an id below
one already counted. Only events older than `lag` are read, in id order, stopping at the first
younger one: an event is missed only if its transaction stayed open longer than `lag` (the usage
transaction holds a row lock for milliseconds). The hot path writes nothing here.
"""

from __future__ import annotations

import zoneinfo
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate

from accounts.models import Organization
from usage.models import DailyUsage, Decision, RollupCursor, UsageEvent

CURSOR_NAME = "daily_usage"
LAG = timedelta(minutes=2)
CHUNK = 5000


def zone_of(name: str) -> tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return UTC


@dataclass(slots=True)
class _Sums:
    quantity: Decimal = Decimal(0)
    from_allowance: Decimal = Decimal(0)
    credits: Decimal = Decimal(0)
    events: int = 0
    denied: int = 0


def daily_usage_rollup(*, now: datetime, lag: timedelta = LAG, chunk: int = CHUNK) -> int:
    """Count new events (older than `lag`) into DailyUsage. Returns how many events were counted."""
    cutoff = now - lag
    total = 0
    while True:
        counted, more = _rollup_chunk(cutoff=cutoff, chunk=chunk, now=now)
        total += counted
        if not more:
            return total


@transaction.atomic
def _rollup_chunk(*, cutoff: datetime, chunk: int, now: datetime) -> tuple[int, bool]:
    RollupCursor.objects.get_or_create(name=CURSOR_NAME)
    cursor = RollupCursor.objects.select_for_update().get(name=CURSOR_NAME)
    rows = list(
        UsageEvent.objects.filter(id__gt=cursor.last_event_id)
        .order_by("id")
        .values_list(
            "id",
            "organization_id",
            "meter_id",
            "decision",
            "quantity",
            "from_allowance",
            "credits_charged",
            "created_at",
        )[:chunk]
    )
    taken = []
    for event in rows:
        if event[7] > cutoff:
            break
        taken.append(event)
    if not taken:
        return 0, False
    zones = {
        org_id: zone_of(tz)
        for org_id, tz in Organization.objects.filter(id__in={r[1] for r in taken}).values_list("id", "timezone")
    }
    sums: dict[tuple[int, int, date], _Sums] = defaultdict(_Sums)
    for _id, org_id, meter_id, decision, quantity, from_allowance, credits, created_at in taken:
        day = created_at.astimezone(zones.get(org_id, UTC)).date()
        item = sums[(org_id, meter_id, day)]
        if decision == Decision.ALLOWED:
            item.quantity += quantity
            item.from_allowance += from_allowance
            item.credits += credits
            item.events += 1
        else:
            item.denied += 1
    existing = {
        (row.organization_id, row.meter_id, row.day): row
        for row in DailyUsage.objects.filter(
            organization_id__in={k[0] for k in sums}, meter_id__in={k[1] for k in sums}, day__in={k[2] for k in sums}
        )
    }
    new: list[DailyUsage] = []
    changed: list[DailyUsage] = []
    for key, item in sums.items():
        found = existing.get(key)
        if found is None:
            row = DailyUsage(organization_id=key[0], meter_id=key[1], day=key[2])
            new.append(row)
        else:
            row = found
            changed.append(row)
        row.quantity += item.quantity
        row.from_allowance += item.from_allowance
        row.credits += item.credits
        row.events += item.events
        row.denied += item.denied
    # The cursor lock serializes every writer of DailyUsage, so plain inserts cannot clash.
    DailyUsage.objects.bulk_create(new)
    DailyUsage.objects.bulk_update(changed, ["quantity", "from_allowance", "credits", "events", "denied"])
    cursor.last_event_id = taken[-1][0]
    cursor.updated_at = now
    cursor.save(update_fields=["last_event_id", "updated_at"])
    more = len(taken) == len(rows) == chunk
    return len(taken), more


# Reads ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayRow:
    day: date
    quantity: Decimal
    from_allowance: Decimal
    credits: Decimal
    events: int
    denied: int

    @property
    def from_credits(self) -> Decimal:
        """Units not covered by the plan (paid with credits)."""
        return self.quantity - self.from_allowance


PENDING_DAYS = 2  # how far back the not-yet-rolled-up events are added to a series


def _pending(*, organization_id: int, zone: tzinfo, last_day: date) -> dict[tuple[int, date], _Sums]:
    """Events above the watermark from the last PENDING_DAYS days, summed per (meter, day).

    One indexed range read (organization, created_at) of a few minutes of events when the rollup
    runs every minute; bounded by PENDING_DAYS when it has stopped.
    """
    watermark = RollupCursor.objects.filter(name=CURSOR_NAME).values_list("last_event_id", flat=True).first() or 0
    since = datetime.combine(last_day - timedelta(days=PENDING_DAYS - 1), time.min, tzinfo=zone)
    sums: dict[tuple[int, date], _Sums] = defaultdict(_Sums)
    rows = (
        UsageEvent.objects.filter(organization_id=organization_id, created_at__gte=since, id__gt=watermark)
        .annotate(day=TruncDate("created_at", tzinfo=zone))
        .values("meter_id", "day", "decision")
        .annotate(
            quantity=Sum("quantity"),
            from_allowance=Sum("from_allowance"),
            credits=Sum("credits_charged"),
            events=Count("id"),
        )
    )
    for row in rows:
        item = sums[(row["meter_id"], row["day"])]
        if row["decision"] == Decision.ALLOWED:
            item.quantity += row["quantity"]
            item.from_allowance += row["from_allowance"]
            item.credits += row["credits"]
            item.events += row["events"]
        else:
            item.denied += row["events"]
    return sums


def daily_usage_series(
    *, organization_id: int, meter_ids: list[int], last_day: date, days: int = 30, zone: tzinfo = UTC
) -> dict[int, list[DayRow]]:
    """For each meter, one row per day from last_day - days + 1 to last_day (zeros where nothing).

    Rolled-up days, plus the recent events the rollup has not reached yet, so today is complete.
    """
    first = last_day - timedelta(days=days - 1)
    sums: dict[tuple[int, date], _Sums] = defaultdict(_Sums)
    for row in DailyUsage.objects.filter(
        Q(organization_id=organization_id), Q(meter_id__in=meter_ids), day__gte=first, day__lte=last_day
    ):
        sums[(row.meter_id, row.day)] = _Sums(row.quantity, row.from_allowance, row.credits, row.events, row.denied)
    for key, item in _pending(organization_id=organization_id, zone=zone, last_day=last_day).items():
        total = sums[key]
        total.quantity += item.quantity
        total.from_allowance += item.from_allowance
        total.credits += item.credits
        total.events += item.events
        total.denied += item.denied
    series: dict[int, list[DayRow]] = {}
    for meter_id in meter_ids:
        rows = []
        for n in range(days):
            day = first + timedelta(days=n)
            hit = sums.get((meter_id, day)) or _Sums()
            rows.append(DayRow(day, hit.quantity, hit.from_allowance, hit.credits, hit.events, hit.denied))
        series[meter_id] = rows
    return series


def rollup_updated_at() -> datetime | None:
    return RollupCursor.objects.filter(name=CURSOR_NAME).values_list("updated_at", flat=True).first()
