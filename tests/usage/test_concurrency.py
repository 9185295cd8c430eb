"""Concurrency on PostgreSQL with real threads: no overspend, one effect per key, no deadlock.

Every thread opens its own connection, waits at a barrier so all start together, calls the
service, and closes its connection. Each test then reads the committed state and checks it
against what the threads were told, and against tests/invariants.py.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from billing.models import CreditAccount, EntryKind, LedgerEntry
from billing.services import credits_grant
from tests.factories import T0, AllowanceFactory, MeterFactory, PlanFactory, make_org
from tests.invariants import assert_ledger_consistent
from usage.models import AllowanceWindow, Decision, Reservation, ReservationStatus, UsageEvent
from usage.services import (
    UsageInput,
    reservation_commit,
    reservation_create,
    reservation_release,
    usage_record,
    usage_record_batch,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.usefixtures("require_postgres"),
]

JOIN_TIMEOUT = 60  # seconds; a thread still alive after this is a deadlock or a lost lock


def run_threads(count: int, work: Callable[[int], Any]) -> tuple[dict[int, Any], dict[int, BaseException]]:
    """Run work(i) in `count` threads started together; return results and exceptions by index."""
    barrier = threading.Barrier(count)
    results: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    alive = [t.name for t in threads if t.is_alive()]
    assert alive == [], f"threads still running after {JOIN_TIMEOUT}s (deadlock?): {alive}"
    return results, errors


def consumed(organization_id: int) -> Decimal:
    """Credits drawn by usage according to the ledger (a positive number)."""
    amounts = LedgerEntry.objects.filter(organization_id=organization_id, kind=EntryKind.CONSUME).values_list(
        "amount", flat=True
    )
    return -sum(amounts, Decimal(0))


@pytest.mark.parametrize(("included", "allowed_total"), [(Decimal("0"), 10), (Decimal("3"), 13)])
def test_32_threads_never_overspend_a_small_balance(included, allowed_total):
    # Given an organization with `included` units of allowance and 50 credits in two lots (23 + 27),
    # and a meter costing 5 credits per unit: room for 10 paid events (one of them spans both lots)
    allowance = AllowanceFactory(limit=included, meter=MeterFactory(credits_per_unit=Decimal("5")))
    org = make_org(plan=allowance.plan)
    credits_grant(organization_id=org.pk, credits=Decimal("23"), now=T0, expires_at=T0 + timedelta(days=30))
    credits_grant(organization_id=org.pk, credits=Decimal("27"), now=T0, category="paid")

    # When 32 threads each record one unit at once
    def work(i: int):
        item = UsageInput(
            organization_id=org.pk, meter=allowance.meter.key, quantity=Decimal("1"), idempotency_key=f"k{i}"
        )
        return usage_record(item=item, now=T0 + timedelta(seconds=1))

    results, errors = run_threads(32, work)

    # Then nothing failed, exactly `allowed_total` were allowed and the rest denied with limit_reached
    assert errors == {}
    statuses = Counter(outcome.status for outcome in results.values())
    assert statuses == {201: allowed_total, 402: 32 - allowed_total}
    allowed = [o.body for o in results.values() if o.status == 201]
    denied = [o.body for o in results.values() if o.status == 402]
    assert {body["error"]["code"] for body in denied} == {"limit_reached"}
    # and each allowed answer saw a distinct, serialized balance: the allowance first, then 45, 40, ... 0
    assert sorted((Decimal(b["credits"]["balance"]) for b in allowed), reverse=True) == (
        [Decimal(50)] * int(included) + [Decimal(50 - 5 * n) for n in range(1, 11)]
    )
    assert sum(Decimal(b["from_allowance"]) for b in allowed) == included
    charged = sum(Decimal(b["credits_charged"]) for b in allowed)
    assert charged == Decimal(50)

    # and the database agrees: 50 credits drawn, balance 0, the allowed events are exactly those answered
    account = CreditAccount.objects.get(organization=org)
    assert account.balance == Decimal(0)
    assert consumed(org.pk) == charged == Decimal(50) - account.balance
    events = UsageEvent.objects.filter(organization=org)
    assert events.count() == 32
    assert set(events.filter(decision=Decision.ALLOWED).values_list("id", flat=True)) == {b["id"] for b in allowed}
    assert sum(events.values_list("credits_charged", flat=True), Decimal(0)) == Decimal(50)
    # one entry per lot drawn: 9 events from one lot, one split over both
    assert LedgerEntry.objects.filter(organization=org, kind=EntryKind.CONSUME).count() == 11
    if included:
        assert list(AllowanceWindow.objects.filter(organization=org).values_list("used", flat=True)) == [included]
    assert_ledger_consistent(org.pk)


@pytest.mark.parametrize(
    ("credits", "status", "decision"), [(Decimal("100"), 201, Decision.ALLOWED), (Decimal("0"), 402, Decision.DENIED)]
)
def test_one_key_from_8_threads_has_exactly_one_effect(credits, status, decision):
    # Given an organization without allowance and `credits` credits
    allowance = AllowanceFactory(limit=Decimal("0"), meter=MeterFactory(credits_per_unit=Decimal("5")))
    org = make_org(plan=allowance.plan)
    if credits:
        credits_grant(organization_id=org.pk, credits=credits, now=T0)

    # When 8 threads send the same key and body at once
    def work(i: int):
        item = UsageInput(
            organization_id=org.pk,
            meter=allowance.meter.key,
            quantity=Decimal("3"),
            idempotency_key="same-key",
            metadata={"job": "render-1"},
        )
        return usage_record(item=item, now=T0 + timedelta(seconds=1))

    results, errors = run_threads(8, work)

    # Then all 8 got the same status and the same body (same event id); one was first, 7 replays
    assert errors == {}
    assert {o.status for o in results.values()} == {status}
    bodies = [o.body for o in results.values()]
    assert all(body == bodies[0] for body in bodies)
    assert sorted(o.replayed for o in results.values()) == [False] + [True] * 7
    # and the database holds one event and, if allowed, one draw of 15 credits
    event = UsageEvent.objects.get(organization=org)
    assert event.pk == bodies[0]["id"]
    assert event.decision == decision
    entries = LedgerEntry.objects.filter(organization=org, kind=EntryKind.CONSUME)
    if status == 201:
        assert list(entries.values_list("amount", "reference")) == [(Decimal("-15"), f"usage:{event.pk}")]
        assert CreditAccount.objects.get(organization=org).balance == Decimal("85")
    else:
        assert entries.count() == 0
        assert bodies[0]["error"]["code"] == "limit_reached"
    assert_ledger_consistent(org.pk)


def test_reservations_commits_releases_and_usage_at_once_stay_consistent():
    # Given an organization with a 5-hour window of 6 units, a period window of 20 units,
    # and 200 credits at 5 credits per unit beyond the allowance
    meter = MeterFactory(credits_per_unit=Decimal("5"))
    plan = PlanFactory()
    AllowanceFactory(plan=plan, meter=meter, limit=Decimal("6"), window_kind="rolling", window_seconds=5 * 3600)
    AllowanceFactory(plan=plan, meter=meter, limit=Decimal("20"))
    org = make_org(plan=plan)
    credits_grant(organization_id=org.pk, credits=Decimal("120"), now=T0)
    credits_grant(organization_id=org.pk, credits=Decimal("80"), now=T0, priority=50, expires_at=T0 + timedelta(days=1))
    now = T0 + timedelta(minutes=1)

    # When 24 threads at once: a third reserve 4 then commit 2 or 6, a third reserve 3 then release,
    # and a third record 2 units, three times each
    def work(i: int) -> list[tuple[str, int]]:
        seen = []
        for round_ in range(3):
            key = f"t{i}-r{round_}"
            item = UsageInput(
                organization_id=org.pk,
                meter=meter.key,
                quantity=Decimal("4" if i % 3 == 0 else "3"),
                idempotency_key=key,
            )
            if i % 3 == 2:
                item.quantity = Decimal("2")
                seen.append(("usage", usage_record(item=item, now=now).status))
                continue
            created = reservation_create(item=item, ttl_seconds=600, now=now)
            seen.append(("reserve", created.status))
            if created.status != 201:
                continue
            if i % 3 == 0:
                actual = Decimal("2" if round_ % 2 else "6")
                done = reservation_commit(
                    organization_id=org.pk, reservation_id=created.body["id"], quantity=actual, now=now
                )
                seen.append(("commit", done.status))
            else:
                done = reservation_release(organization_id=org.pk, reservation_id=created.body["id"], now=now)
                seen.append(("release", done.status))
        return seen

    results, errors = run_threads(24, work)

    # Then nothing failed, every call answered with an expected status
    assert errors == {}
    statuses = Counter(pair for seen in results.values() for pair in seen)
    assert set(statuses) <= {
        ("usage", 201),
        ("usage", 402),
        ("reserve", 201),
        ("reserve", 402),
        ("commit", 200),
        ("release", 200),
    }
    # and every reservation was settled: committed, released, or denied (none left held)
    reservations = Reservation.objects.filter(organization=org)
    assert reservations.filter(status=ReservationStatus.HELD).count() == 0
    assert reservations.filter(status=ReservationStatus.COMMITTED).count() == statuses[("commit", 200)]
    assert reservations.filter(status=ReservationStatus.RELEASED).count() == statuses[("release", 200)]
    assert reservations.filter(status=ReservationStatus.DENIED).count() == statuses[("reserve", 402)]
    # and what the allowed events consumed is exactly what left the account and the windows
    allowed = UsageEvent.objects.filter(organization=org, decision=Decision.ALLOWED)
    charged = sum(allowed.values_list("credits_charged", flat=True), Decimal(0))
    included = sum(allowed.values_list("from_allowance", flat=True), Decimal(0))
    account = CreditAccount.objects.get(organization=org)
    assert account.balance == Decimal(200) - charged
    assert consumed(org.pk) == charged
    windows = sorted(AllowanceWindow.objects.filter(organization=org).values_list("limit", "used"))
    assert windows == [(Decimal("6"), included), (Decimal("20"), included)]
    assert_ledger_consistent(org.pk)


def test_batches_over_overlapping_organizations_do_not_deadlock():
    # Given 5 organizations, each with 60 credits and no allowance, at 5 credits per unit
    allowance = AllowanceFactory(limit=Decimal("0"), meter=MeterFactory(credits_per_unit=Decimal("5")))
    orgs = [make_org(plan=allowance.plan) for _ in range(5)]
    for org in orgs:
        credits_grant(organization_id=org.pk, credits=Decimal("60"), now=T0)
    now = T0 + timedelta(seconds=1)

    # When 12 threads each send 4 batches; each batch covers 3 or 4 organizations, listed in an
    # order that differs per thread (reversed for odd threads), 2 events per organization
    def work(i: int) -> list[list[tuple[int, int]]]:
        answers = []
        for round_ in range(4):
            chosen = [orgs[(i + round_ + k) % len(orgs)] for k in range(3 + (i % 2))]
            if i % 2:
                chosen.reverse()
            items = [
                UsageInput(
                    organization_id=org.pk,
                    meter=allowance.meter.key,
                    quantity=Decimal("1"),
                    idempotency_key=f"t{i}-r{round_}-e{e}",
                )
                for org in chosen
                for e in range(2)
            ]
            outcomes = usage_record_batch(items=items, now=now)
            answers.append([(item.organization_id, o.status) for item, o in zip(items, outcomes, strict=True)])
        return answers

    results, errors = run_threads(12, work)

    # Then no thread failed (a deadlock would raise DeadlockDetected) and every event got 201 or 402
    assert errors == {}
    per_org: dict[int, Counter] = {org.pk: Counter() for org in orgs}
    for answers in results.values():
        for batch in answers:
            for org_id, status in batch:
                per_org[org_id][status] += 1
    # and each organization allowed exactly 12 events (60 credits / 5) and denied the rest
    for org in orgs:
        counts = per_org[org.pk]
        assert set(counts) <= {201, 402}
        assert counts[201] == 12, (org.pk, counts)
        assert UsageEvent.objects.filter(organization=org, decision=Decision.ALLOWED).count() == 12
        assert UsageEvent.objects.filter(organization=org).count() == counts[201] + counts[402]
        assert CreditAccount.objects.get(organization=org).balance == Decimal(0)
        assert consumed(org.pk) == Decimal(60)
        assert_ledger_consistent(org.pk)
