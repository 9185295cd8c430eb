"""The ledger audit: invariants 1-3 of ARCHITECTURE.md, checked for every organization at once.

Each check is one aggregate query (GROUP BY ... HAVING) that returns only what is broken, so the
cost grows with the number of rows scanned, never with a query per organization. It lives in
usage because it reads windows and reservations as well as billing's lots and ledger.

Sums are compared with a tolerance of half the smallest credit unit: exact on PostgreSQL
(NUMERIC), and safe on SQLite, which sums decimals as floating point.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import Count, DecimalField, ExpressionWrapper, F, Max, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from accounts.models import Organization
from billing.models import CreditAccount, CreditLot, EntryKind, LedgerEntry
from core.money import CREDIT_DIGITS, CREDIT_PLACES, format_decimal
from usage.models import AllowanceWindow, Reservation, ReservationStatus, UsageEvent

_EPSILON = Decimal(1).scaleb(-CREDIT_PLACES) / 2
_MAX_DETAILS_PER_CHECK = 5  # per organization; the rest is counted
_RESERVATION_PREFIX = "reservation:"


def _credits() -> DecimalField:
    return DecimalField(max_digits=CREDIT_DIGITS + 6, decimal_places=CREDIT_PLACES)


def _zero() -> Value:
    return Value(Decimal(0), output_field=_credits())


def _differs(name: str) -> Q:
    return Q(**{f"{name}__gt": _EPSILON}) | Q(**{f"{name}__lt": -_EPSILON})


def _fmt(value: Decimal | None) -> str:
    return "none" if value is None else format_decimal(Decimal(value))


@dataclass
class AuditReport:
    organizations_checked: int
    problems: dict[int, list[str]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        return [
            f"organization {org_id} ({self.names.get(org_id, '?')}): " + "; ".join(found)
            for org_id, found in sorted(self.problems.items())
        ]


class _Findings:
    """Problems per organization, at most a few details per check so one bad org cannot flood the output."""

    def __init__(self) -> None:
        self.by_org: dict[int, list[str]] = defaultdict(list)
        self._counts: dict[tuple[int, str], int] = defaultdict(int)

    def add(self, organization_id: int, check: str, detail: str) -> None:
        key = (organization_id, check)
        self._counts[key] += 1
        if self._counts[key] <= _MAX_DETAILS_PER_CHECK:
            self.by_org[organization_id].append(detail)

    def finish(self) -> dict[int, list[str]]:
        for (org_id, check), count in self._counts.items():
            if count > _MAX_DETAILS_PER_CHECK:
                self.by_org[org_id].append(f"and {count - _MAX_DETAILS_PER_CHECK} more {check} problems")
        return dict(self.by_org)


def ledger_audit(*, organization_id: int | None = None) -> AuditReport:
    """Check every organization (or one); returns what is broken, per organization."""

    def scoped(qs: QuerySet[Any], name: str = "organization_id") -> QuerySet[Any]:
        return qs if organization_id is None else qs.filter(**{name: organization_id})

    found = _Findings()
    _check_ranges(found, scoped)
    _check_lots_against_entries(found, scoped)
    _check_balances(found, scoped)
    _check_uniqueness(found, scoped)
    _check_reservations(found, scoped)

    orgs = scoped(Organization.objects.all(), "pk")
    report = AuditReport(organizations_checked=orgs.count(), problems=found.finish())
    if report.problems:
        report.names = dict(Organization.objects.filter(pk__in=list(report.problems)).values_list("pk", "name"))
    return report


def _check_ranges(found: _Findings, scoped: Any) -> None:
    """Invariant 1: no lot and no window below zero (or past what it had). Also DB CHECKs."""
    lots = scoped(CreditLot.objects.filter(Q(remaining__lt=0) | Q(remaining__gt=F("granted")) | Q(granted__lte=0)))
    for row in lots.values("organization_id", "pk", "remaining", "granted").order_by("pk"):
        found.add(
            row["organization_id"],
            "lot range",
            f"lot #{row['pk']} remaining {_fmt(row['remaining'])} is outside 0..granted {_fmt(row['granted'])}",
        )
    windows = scoped(AllowanceWindow.objects.filter(Q(used__lt=0) | Q(used__gt=F("limit")) | Q(limit__lt=0)))
    for row in windows.values("organization_id", "pk", "used", "limit").order_by("pk"):
        found.add(
            row["organization_id"],
            "window range",
            f"window #{row['pk']} used {_fmt(row['used'])} is outside 0..limit {_fmt(row['limit'])}",
        )


def _check_lots_against_entries(found: _Findings, scoped: Any) -> None:
    """Invariant 2, per lot: its entries (grant, draws, holds, releases, expiry, ...) add up to what remains."""
    lots = (
        scoped(CreditLot.objects.all())
        .annotate(entries_total=Coalesce(Sum("entries__amount"), _zero()))
        .annotate(diff=ExpressionWrapper(F("entries_total") - F("remaining"), output_field=_credits()))
        .filter(_differs("diff"))
        .values("organization_id", "pk", "remaining", "entries_total")
        .order_by("pk")
    )
    for row in lots:
        found.add(
            row["organization_id"],
            "lot ledger",
            f"lot #{row['pk']} remaining {_fmt(row['remaining'])} "
            f"!= sum of its ledger entries {_fmt(row['entries_total'])}",
        )
    foreign = scoped(LedgerEntry.objects.exclude(organization_id=F("lot__organization_id")))
    for row in foreign.values("organization_id").annotate(n=Count("pk")).order_by("organization_id"):
        found.add(
            row["organization_id"], "entry owner", f"{row['n']} ledger entries point at another organization's lot"
        )


def _check_balances(found: _Findings, scoped: Any) -> None:
    """Invariant 2, per organization: sum of lots' remaining = the cached balance = the last entry's balance_after."""
    accounts = (
        scoped(CreditAccount.objects.all())
        .annotate(lots_total=Coalesce(Sum("organization__credit_lots__remaining"), _zero()))
        .annotate(diff=ExpressionWrapper(F("lots_total") - F("balance"), output_field=_credits()))
        .filter(_differs("diff"))
        .values("organization_id", "balance", "lots_total")
        .order_by("organization_id")
    )
    for row in accounts:
        found.add(
            row["organization_id"],
            "balance",
            f"balance {_fmt(row['balance'])} != sum of lots' remaining {_fmt(row['lots_total'])}",
        )
    orphans = scoped(CreditLot.objects.filter(organization__credit_account__isnull=True))
    for row in orphans.values("organization_id").annotate(n=Count("pk")).order_by("organization_id"):
        found.add(row["organization_id"], "account", f"{row['n']} credit lots but no credit account")

    last_ids = scoped(LedgerEntry.objects.all()).values("organization_id").annotate(last=Max("pk")).values("last")
    last_entries = (
        LedgerEntry.objects.filter(pk__in=last_ids)
        .annotate(
            diff=ExpressionWrapper(
                F("balance_after") - F("organization__credit_account__balance"), output_field=_credits()
            )
        )
        .filter(_differs("diff"))
        .values("organization_id", "pk", "balance_after", "organization__credit_account__balance")
        .order_by("organization_id")
    )
    for row in last_entries:
        found.add(
            row["organization_id"],
            "running balance",
            f"last ledger entry #{row['pk']} says balance {_fmt(row['balance_after'])}, "
            f"the account says {_fmt(row['organization__credit_account__balance'])}",
        )


def _check_uniqueness(found: _Findings, scoped: Any) -> None:
    """Invariant 3: one effect per (organization, key), one lot per (organization, external ref). Also DB UNIQUEs."""
    # A reservation's commit event has its own kind and key ("reservation:<id>:commit"), so event keys are per kind.
    for model, group, key, what in (
        (UsageEvent, ("kind",), "idempotency_key", "usage events with idempotency key"),
        (Reservation, (), "idempotency_key", "reservations with idempotency key"),
        (CreditLot, (), "external_ref", "credit lots with external ref"),
    ):
        qs = scoped(model.objects.filter(**{f"{key}__isnull": False}))
        dupes = (
            qs.values("organization_id", *group, key)
            .annotate(n=Count("pk"))
            .filter(n__gt=1)
            .order_by("organization_id", key)
        )
        for row in dupes:
            found.add(row["organization_id"], "duplicate", f"{row['n']} {what} {row[key]!r}")


def _check_reservations(found: _Findings, scoped: Any) -> None:
    """A held reservation's credits are held in the ledger (HOLD minus RELEASE entries, per lot, equal
    what it says it holds); a settled one holds nothing."""
    outstanding: dict[str, dict[int, Decimal]] = defaultdict(dict)  # reference -> lot -> net held (positive)
    entry_org: dict[str, int] = {}
    rows = (
        scoped(
            LedgerEntry.objects.filter(
                kind__in=[EntryKind.HOLD, EntryKind.RELEASE], reference__startswith=_RESERVATION_PREFIX
            )
        )
        .values("organization_id", "reference", "lot_id")
        .annotate(net=Sum("amount"))
        .filter(_differs("net"))
        .order_by()
    )
    for row in rows:
        outstanding[row["reference"]][row["lot_id"]] = -Decimal(row["net"])
        entry_org[row["reference"]] = row["organization_id"]

    held = scoped(Reservation.objects.filter(status=ReservationStatus.HELD)).values(
        "pk", "organization_id", "credits_held", "held_lots"
    )
    for res in held:
        reference = f"{_RESERVATION_PREFIX}{res['pk']}"
        in_ledger = outstanding.pop(reference, {})
        ledger_org = entry_org.pop(reference, None)
        if ledger_org is not None and ledger_org != res["organization_id"]:
            found.add(
                ledger_org,
                "reservation",
                f"ledger entries hold credits for reservation #{res['pk']} of another organization",
            )
        said: dict[int, Decimal] = defaultdict(Decimal)
        for item in res["held_lots"] or []:
            said[int(item["lot"])] += Decimal(item["amount"])
        said_total = sum(said.values(), Decimal(0))
        ledger_total = sum(in_ledger.values(), Decimal(0))
        org_id = res["organization_id"]
        if abs(said_total - res["credits_held"]) > _EPSILON:
            found.add(
                org_id,
                "reservation",
                f"reservation #{res['pk']} credits_held {_fmt(res['credits_held'])} "
                f"!= its held lots {_fmt(said_total)}",
            )
        if abs(ledger_total - res["credits_held"]) > _EPSILON:
            found.add(
                org_id,
                "reservation",
                f"held reservation #{res['pk']} holds {_fmt(res['credits_held'])} credits, "
                f"its ledger entries hold {_fmt(ledger_total)}",
            )
        elif any(abs(said.get(lot, Decimal(0)) - amount) > _EPSILON for lot, amount in in_ledger.items()):
            found.add(
                org_id,
                "reservation",
                f"held reservation #{res['pk']} holds its credits on other lots than its ledger entries",
            )

    if outstanding:
        ids = [
            int(ref.removeprefix(_RESERVATION_PREFIX))
            for ref in outstanding
            if ref.removeprefix(_RESERVATION_PREFIX).isdigit()
        ]
        statuses = dict(Reservation.objects.filter(pk__in=ids).values_list("pk", "status"))
        for reference, by_lot in sorted(outstanding.items()):
            res_id = reference.removeprefix(_RESERVATION_PREFIX)
            status = statuses.get(int(res_id)) if res_id.isdigit() else None
            state = f"is {status}" if status else "does not exist"
            found.add(
                entry_org[reference],
                "reservation",
                f"reservation #{res_id} {state} but its ledger entries still hold "
                f"{_fmt(sum(by_lot.values(), Decimal(0)))} credits",
            )
