"""An independent checker of an organization's credits, straight from the database.

It reads rows with plain ORM queries and recomputes everything itself; it does not import the
engine (usage.services, billing.services), so an engine bug cannot hide in both places.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing.models import CreditAccount, CreditLot, EntryKind, LedgerEntry
from usage.models import AllowanceWindow, Decision, Reservation, ReservationStatus, UsageEvent

ZERO = Decimal(0)


class LedgerInconsistentError(AssertionError):
    pass


def _fail(organization_id: int, problems: list[str]) -> None:
    if problems:
        raise LedgerInconsistentError(f"organization {organization_id}: " + "; ".join(problems))


def assert_ledger_consistent(organization_id: int) -> None:
    """Raise LedgerInconsistentError (an AssertionError) naming every broken invariant of this organization.

    - every lot: 0 <= remaining <= granted; its first entry is its GRANT (or ADJUST) of `granted`;
      the sum of all its entries equals `remaining`;
    - sum of lots' remaining == CreditAccount.balance;
    - entries in id order: each balance_after is the running sum of amounts, and the last one
      equals the balance;
    - every window: 0 <= used <= limit, and used covers what held reservations hold in it;
    - per reservation: -(HOLD + RELEASE entries) == credits_held while held, else 0;
    - per usage event: its entries are CONSUME entries summing to -credits_charged (none if denied).
    """
    problems: list[str] = []
    account = CreditAccount.objects.filter(organization_id=organization_id).first()
    if account is None:
        raise LedgerInconsistentError(f"organization {organization_id} has no credit account")

    lots = {lot.pk: lot for lot in CreditLot.objects.filter(organization_id=organization_id)}
    entries = list(
        LedgerEntry.objects.filter(organization_id=organization_id)
        .order_by("id")
        .values("id", "lot_id", "kind", "amount", "balance_after", "reference")
    )

    # Lots.
    by_lot: dict[int, list[Any]] = defaultdict(list)
    for entry in entries:
        by_lot[entry["lot_id"]].append(entry)
    for lot in lots.values():
        if not ZERO <= lot.remaining <= lot.granted:
            problems.append(f"lot {lot.pk}: remaining {lot.remaining} outside [0, {lot.granted}]")
        own = by_lot.get(lot.pk, [])
        if not own:
            problems.append(f"lot {lot.pk}: no ledger entries")
            continue
        first = own[0]
        if first["kind"] not in (EntryKind.GRANT, EntryKind.ADJUST) or first["amount"] != lot.granted:
            problems.append(
                f"lot {lot.pk}: first entry {first['kind']} {first['amount']}, expected grant of {lot.granted}"
            )
        if any(e["kind"] == EntryKind.GRANT for e in own[1:]):
            problems.append(f"lot {lot.pk}: more than one grant entry")
        total = sum((e["amount"] for e in own), ZERO)
        if total != lot.remaining:
            problems.append(f"lot {lot.pk}: entries sum to {total}, remaining is {lot.remaining}")
    foreign = set(by_lot) - set(lots)
    if foreign:
        problems.append(f"entries on lots of another organization: {sorted(foreign)}")

    # Balance.
    lots_total = sum((lot.remaining for lot in lots.values()), ZERO)
    if lots_total != account.balance:
        problems.append(f"lots hold {lots_total}, account balance is {account.balance}")
    running = ZERO
    for entry in entries:
        running += entry["amount"]
        if entry["balance_after"] != running:
            problems.append(f"entry {entry['id']}: balance_after {entry['balance_after']}, running sum {running}")
            break
    if entries and entries[-1]["balance_after"] != account.balance:
        problems.append(f"last entry balance_after {entries[-1]['balance_after']} != balance {account.balance}")
    if not entries and account.balance != 0:
        problems.append(f"no entries but balance {account.balance}")

    # Windows.
    windows = {(w.allowance_id, w.start): w for w in AllowanceWindow.objects.filter(organization_id=organization_id)}
    for w in windows.values():
        if not ZERO <= w.used <= w.limit:
            problems.append(f"window {w.pk}: used {w.used} outside [0, {w.limit}]")

    # Reservations.
    held_by_ref: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for entry in entries:
        ref = entry["reference"]
        if ref.startswith("reservation:"):
            if entry["kind"] not in (EntryKind.HOLD, EntryKind.RELEASE):
                problems.append(f"entry {entry['id']}: kind {entry['kind']} with reference {ref}")
            held_by_ref[ref] -= entry["amount"]
        elif entry["kind"] in (EntryKind.HOLD, EntryKind.RELEASE):
            problems.append(f"entry {entry['id']}: {entry['kind']} without a reservation reference ({ref!r})")
    window_holds: dict[tuple[int, datetime], Decimal] = defaultdict(lambda: ZERO)
    reservation_refs = set()
    for r in Reservation.objects.filter(organization_id=organization_id):
        ref = f"reservation:{r.pk}"
        reservation_refs.add(ref)
        expected = r.credits_held if r.status == ReservationStatus.HELD else ZERO
        if held_by_ref[ref] != expected:
            problems.append(f"reservation {r.pk} ({r.status}): ledger holds {held_by_ref[ref]}, expected {expected}")
        if r.status == ReservationStatus.HELD:
            held_lots = sum((Decimal(item["amount"]) for item in r.held_lots), ZERO)
            if held_lots != r.credits_held:
                problems.append(f"reservation {r.pk}: held_lots sum {held_lots} != credits_held {r.credits_held}")
            for item in r.held_windows:
                window_holds[(item["allowance"], datetime.fromisoformat(item["start"]))] += Decimal(item["amount"])
        if r.status == ReservationStatus.DENIED and (r.credits_held or r.from_allowance):
            problems.append(f"reservation {r.pk}: denied but holds {r.from_allowance} units, {r.credits_held} credits")
    unknown = {ref for ref, amount in held_by_ref.items() if ref not in reservation_refs and amount}
    if unknown:
        problems.append(f"holds for unknown reservations: {sorted(unknown)}")
    for key, amount in window_holds.items():
        held_in = windows.get(key)
        if held_in is None:
            problems.append(f"reservations hold {amount} in a window that does not exist: {key}")
        elif held_in.used < amount:
            problems.append(f"window {held_in.pk}: used {held_in.used} < {amount} held by reservations")

    # Usage events: allowed means its ledger rows exist, denied means none.
    by_usage: dict[int, list[Any]] = defaultdict(list)
    for entry in entries:
        ref = entry["reference"]
        if ref.startswith("usage:"):
            by_usage[int(ref.split(":", 1)[1])].append(entry)
        elif entry["kind"] == EntryKind.CONSUME:
            problems.append(f"entry {entry['id']}: consumption without a usage reference ({ref!r})")
    events = {
        e["id"]: e
        for e in UsageEvent.objects.filter(organization_id=organization_id).values(
            "id", "decision", "credits_charged", "from_allowance"
        )
    }
    for event_id, event in events.items():
        own = by_usage.get(event_id, [])
        if event["decision"] == Decision.DENIED:
            if own or event["credits_charged"] or event["from_allowance"]:
                problems.append(f"denied event {event_id} consumed something")
            continue
        if any(e["kind"] != EntryKind.CONSUME for e in own):
            problems.append(f"event {event_id}: non-consume entries")
        drawn = -sum((e["amount"] for e in own), ZERO)
        if drawn != event["credits_charged"]:
            problems.append(f"event {event_id}: ledger drew {drawn}, event says {event['credits_charged']}")
    orphans = set(by_usage) - set(events)
    if orphans:
        problems.append(f"entries for unknown usage events: {sorted(orphans)}")

    _fail(organization_id, problems)
