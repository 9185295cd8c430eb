"""Small builders and checks shared by the engine's domain tests (waterfall, lots, reservations,
messages, notices). Services are called directly, with a fixed `now`."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db.models import Sum

from billing.models import CreditAccount, CreditLot, LedgerEntry
from usage.models import AllowanceWindow, Reservation, UsageEvent
from usage.services import Outcome, UsageInput, usage_record


def D(value: str | int) -> Decimal:  # noqa: N802 - reads like the Decimal it builds
    return Decimal(str(value))


def use(org, meter, quantity, key: str, *, now: datetime, user_id: int | None = None, metadata=None) -> Outcome:
    """Record `quantity` of `meter` (a Meter or its key) for `org` with idempotency key `key`."""
    meter_key = meter if isinstance(meter, str) else meter.key
    return usage_record(
        item=UsageInput(
            organization_id=org.pk,
            meter=meter_key,
            quantity=D(quantity),
            idempotency_key=key,
            metadata=metadata or {},
            user_id=user_id,
        ),
        now=now,
    )


def item(org, meter, quantity, key: str, **extra) -> UsageInput:
    meter_key = meter if isinstance(meter, str) else meter.key
    org_id = org if isinstance(org, int) else org.pk
    return UsageInput(organization_id=org_id, meter=meter_key, quantity=D(quantity), idempotency_key=key, **extra)


def balance(org) -> Decimal:
    return CreditAccount.objects.get(organization=org).balance


def windows(org) -> list[tuple[int, datetime, datetime, Decimal, Decimal]]:
    """(allowance id, start, end, limit, used) of every window of `org`, in a fixed order."""
    return list(
        AllowanceWindow.objects.filter(organization=org)
        .order_by("allowance_id", "start")
        .values_list("allowance_id", "start", "end", "limit", "used")
    )


def lots(org) -> list[tuple[int, Decimal]]:
    return list(CreditLot.objects.filter(organization=org).order_by("id").values_list("id", "remaining"))


def entries(org, **filters) -> list[tuple[str, int, Decimal, Decimal, str]]:
    """(kind, lot id, amount, balance_after, reference) of the ledger, oldest first."""
    return list(
        LedgerEntry.objects.filter(organization=org, **filters)
        .order_by("id")
        .values_list("kind", "lot_id", "amount", "balance_after", "reference")
    )


def snapshot(org) -> dict[str, object]:
    """Everything a decision may consume: windows, lots, ledger, the account."""
    account = CreditAccount.objects.get(organization=org)
    return {
        "windows": windows(org),
        "lots": lots(org),
        "ledger": entries(org),
        "account": (account.balance, account.spend_month_total),
        "reservations": list(
            Reservation.objects.filter(organization=org).order_by("id").values_list("id", "status", "quantity")
        ),
    }


def events(org) -> list[tuple[str, str, int, Decimal, Decimal, Decimal]]:
    return list(
        UsageEvent.objects.filter(organization=org)
        .order_by("id")
        .values_list("idempotency_key", "decision", "http_status", "quantity", "from_allowance", "credits_charged")
    )


def assert_books_balance(org) -> Decimal:
    """Invariant 2: the cached balance = the sum of lots' remaining = the sum of ledger amounts."""
    cached = balance(org)
    in_lots = CreditLot.objects.filter(organization=org).aggregate(s=Sum("remaining"))["s"] or Decimal(0)
    in_ledger = LedgerEntry.objects.filter(organization=org).aggregate(s=Sum("amount"))["s"] or Decimal(0)
    assert cached == in_lots == in_ledger, (cached, in_lots, in_ledger)
    last = LedgerEntry.objects.filter(organization=org).order_by("-id").values_list("balance_after", flat=True).first()
    if last is not None:
        assert last == cached, (last, cached)
    return cached
