"""manage.py audit_ledger: passes on a real history, fails (naming the organization) on each kind of break."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import CreditAccount, CreditLot, EntryKind, LedgerEntry
from billing.services import credits_adjust, credits_grant
from core.money import format_decimal as _s
from tests.factories import T0, AllowanceFactory, make_org
from usage.models import AllowanceWindow, Reservation, ReservationStatus, UsageEvent
from usage.services import UsageInput, reservation_commit, reservation_create, reservation_release, usage_record

pytestmark = pytest.mark.django_db


def audit(*args: str) -> str:
    out = StringIO()
    call_command("audit_ledger", *args, stdout=out)
    return out.getvalue()


def audit_fails(*args: str) -> tuple[str, CommandError]:
    out = StringIO()
    with pytest.raises(CommandError) as info:
        call_command("audit_ledger", *args, stdout=out)
    return out.getvalue(), info.value


@contextmanager
def check_disabled(table: str, constraint: str):
    """Let a test write what a CHECK or UNIQUE constraint forbids, to prove the audit sees it too.
    PostgreSQL's DDL is transactional: the test's rollback restores the constraint."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Deferred foreign-key checks must fire before the table can be altered.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{constraint}"')
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        yield
    elif connection.vendor == "sqlite" and "unique" not in constraint:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA ignore_check_constraints = ON")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA ignore_check_constraints = OFF")
    else:
        pytest.skip("needs PostgreSQL to drop a unique constraint")


def use(org, meter_key: str, qty: str, key: str, now=T0):
    return usage_record(
        item=UsageInput(organization_id=org.pk, meter=meter_key, quantity=Decimal(qty), idempotency_key=key), now=now
    )


def reserve(org, meter_key: str, qty: str, key: str, now=T0, ttl: int = 600):
    return reservation_create(
        item=UsageInput(organization_id=org.pk, meter=meter_key, quantity=Decimal(qty), idempotency_key=key),
        ttl_seconds=ttl,
        now=now,
    )


@pytest.fixture
def busy_org():
    """An organization with a full history: allowance, credits from two lots, an expired lot,
    reservations committed, released, expired and still held, and adjustments both ways."""
    allowance = AllowanceFactory(limit=Decimal("2"))  # meter costs 5 credits per unit
    org = make_org(plan=allowance.plan)
    meter = allowance.meter.key
    credits_grant(organization_id=org.pk, credits=Decimal("100"), now=T0, reason="welcome")
    credits_grant(
        organization_id=org.pk, credits=Decimal("30"), now=T0, expires_at=T0 + timedelta(hours=1), priority=10
    )
    assert use(org, meter, "3", "u1").status == 201  # 2 from allowance, 5 credits
    assert use(org, meter, "1.5", "u2").status == 201  # 7.5 credits
    committed = reserve(org, meter, "2", "r1")
    assert committed.status == 201
    assert (
        reservation_commit(
            organization_id=org.pk, reservation_id=committed.body["id"], quantity=Decimal("1"), now=T0
        ).status
        == 200
    )
    released = reserve(org, meter, "1", "r2")
    assert reservation_release(organization_id=org.pk, reservation_id=released.body["id"], now=T0).status == 200
    assert reserve(org, meter, "1", "r3", ttl=60).status == 201  # expires lazily below
    later = T0 + timedelta(hours=2)  # the 30-credit lot has expired by now
    held = reserve(org, meter, "2", "r4", now=later, ttl=3600)
    assert held.status == 201
    credits_adjust(
        organization_id=org.pk, credits=Decimal("-4.25"), reason="refund correction", actor_id=None, now=later
    )
    credits_adjust(organization_id=org.pk, credits=Decimal("12"), reason="goodwill", actor_id=None, now=later)
    assert use(org, meter, "3", "u1", now=later).replayed is True
    return org


def test_clean_organizations_pass(busy_org):
    # Given a busy organization and an empty one
    allowance = AllowanceFactory()
    make_org(plan=allowance.plan)
    # Then the audit passes and counts both
    out = audit()
    assert out == "ledger OK: 2 organizations\n"


def test_busy_history_is_really_busy(busy_org):
    # The fixture exercises every kind of entry the audit sums (so the clean pass above means something)
    kinds = set(LedgerEntry.objects.filter(organization=busy_org).values_list("kind", flat=True))
    assert kinds == {
        EntryKind.GRANT,
        EntryKind.CONSUME,
        EntryKind.HOLD,
        EntryKind.RELEASE,
        EntryKind.EXPIRE,
        EntryKind.ADJUST,
    }
    statuses = set(Reservation.objects.filter(organization=busy_org).values_list("status", flat=True))
    assert statuses == {
        ReservationStatus.COMMITTED,
        ReservationStatus.RELEASED,
        ReservationStatus.EXPIRED,
        ReservationStatus.HELD,
    }


def test_corrupt_lot_remaining_fails_naming_the_org(busy_org):
    # Given a lot whose remaining was changed behind the ledger's back
    lot = CreditLot.objects.filter(organization=busy_org, remaining__gt=1).earliest("pk")
    CreditLot.objects.filter(pk=lot.pk).update(remaining=lot.remaining - 1)
    # When audited
    out, error = audit_fails()
    # Then it exits non-zero and names the organization, the lot and the balance
    assert error.returncode == 1
    assert str(error) == "ledger BROKEN: 1 of 1 organizations"
    line = out.strip()
    assert line.startswith(f"organization {busy_org.pk} ({busy_org.name}): ")
    assert f"lot #{lot.pk} remaining {_s(lot.remaining - 1)} != sum of its ledger entries {_s(lot.remaining)}" in line
    assert "!= sum of lots' remaining" in line


def test_corrupt_account_balance_fails(busy_org):
    # Given a cached balance off by one
    account = CreditAccount.objects.get(organization=busy_org)
    CreditAccount.objects.filter(pk=account.pk).update(balance=account.balance + 1)
    out, error = audit_fails()
    assert error.returncode == 1
    lots_total = sum(CreditLot.objects.filter(organization=busy_org).values_list("remaining", flat=True))
    assert lots_total == account.balance
    expected_balance = account.balance + 1
    assert out == (
        f"organization {busy_org.pk} ({busy_org.name}): "
        f"balance {_s(expected_balance)} != sum of lots' remaining {_s(lots_total)}; "
        f"last ledger entry #{LedgerEntry.objects.filter(organization=busy_org).latest('pk').pk} says balance "
        f"{_s(account.balance)}, the account says {_s(expected_balance)}\n"
    )


def test_corrupt_window_fails(busy_org):
    # Given a window used past its limit (the database CHECK is lifted to write it)
    window = AllowanceWindow.objects.filter(organization=busy_org).earliest("pk")
    with check_disabled("usage_allowancewindow", "window_used_le_limit"):
        AllowanceWindow.objects.filter(pk=window.pk).update(used=window.limit + 3)
        out, error = audit_fails()
    assert error.returncode == 1
    assert out == (
        f"organization {busy_org.pk} ({busy_org.name}): "
        f"window #{window.pk} used {_s(window.limit + 3)} is outside 0..limit {_s(window.limit)}\n"
    )


def test_negative_lot_fails(busy_org):
    lot = CreditLot.objects.filter(organization=busy_org).earliest("pk")
    with check_disabled("billing_creditlot", "lot_remaining_nonnegative"):
        CreditLot.objects.filter(pk=lot.pk).update(remaining=Decimal("-1"))
        out, _ = audit_fails()
    assert f"lot #{lot.pk} remaining -1 is outside 0..granted {_s(lot.granted)}" in out


def test_duplicate_idempotency_key_fails(busy_org, require_postgres):
    # Given two usage events with the same key (the unique constraint lifted)
    event = UsageEvent.objects.filter(organization=busy_org).earliest("pk")
    (unique,) = [c.name for c in UsageEvent._meta.constraints if "idempotency_key" in getattr(c, "fields", ())]
    with check_disabled("usage_usageevent", unique):
        event.pk = None
        event.save()
        out, _ = audit_fails()
    assert (
        out == f"organization {busy_org.pk} ({busy_org.name}): "
        f"2 usage events with idempotency key {event.idempotency_key!r}\n"
    )


def test_duplicate_external_ref_fails(busy_org, require_postgres):
    lot = credits_grant(organization_id=busy_org.pk, credits=Decimal("1"), now=T0, external_ref="pi_123")
    with check_disabled("billing_creditlot", "lot_unique_external_ref"):
        CreditLot.objects.filter(pk=lot.pk).update(granted=Decimal("2"), remaining=Decimal("2"))
        twin = CreditLot.objects.get(pk=lot.pk)
        twin.pk = None
        twin.granted = twin.remaining = Decimal("1")
        twin.save()
        LedgerEntry.objects.create(
            organization=busy_org,
            lot=twin,
            kind=EntryKind.GRANT,
            amount=Decimal("1"),
            balance_after=Decimal("0"),
            created_at=T0,
        )
        out, _ = audit_fails()
    assert "2 credit lots with external ref 'pi_123'" in out


def test_held_reservation_not_matching_its_entries_fails(busy_org):
    # Given the held reservation claims to hold more than its HOLD entries took
    res = Reservation.objects.get(organization=busy_org, status=ReservationStatus.HELD)
    assert res.credits_held == Decimal("10")
    Reservation.objects.filter(pk=res.pk).update(credits_held=Decimal("7"))
    out, _ = audit_fails()
    assert out == (
        f"organization {busy_org.pk} ({busy_org.name}): "
        f"reservation #{res.pk} credits_held 7 != its held lots 10; "
        f"held reservation #{res.pk} holds 7 credits, its ledger entries hold 10\n"
    )


def test_settled_reservation_still_holding_fails(busy_org):
    # Given a reservation marked released without its release entries
    res = Reservation.objects.get(organization=busy_org, status=ReservationStatus.HELD)
    Reservation.objects.filter(pk=res.pk).update(status=ReservationStatus.RELEASED)
    out, _ = audit_fails()
    assert out == (
        f"organization {busy_org.pk} ({busy_org.name}): "
        f"reservation #{res.pk} is released but its ledger entries still hold 10 credits\n"
    )


def test_only_broken_organizations_are_named_and_one_can_be_checked(busy_org):
    # Given a clean organization and a broken one
    allowance = AllowanceFactory()
    clean = make_org(plan=allowance.plan)
    credits_grant(organization_id=clean.pk, credits=Decimal("5"), now=T0)
    CreditAccount.objects.filter(organization=busy_org).update(balance=Decimal("0"))
    # Then the full audit names only the broken one
    out, error = audit_fails()
    assert out.startswith(f"organization {busy_org.pk} ")
    assert f"organization {clean.pk} " not in out
    assert str(error) == "ledger BROKEN: 1 of 2 organizations"
    # And --organization checks one
    assert audit("--organization", str(clean.pk)) == "ledger OK: 1 organizations\n"
    out, _ = audit_fails("--organization", str(busy_org.pk))
    assert out.startswith(f"organization {busy_org.pk} ")


def test_unknown_organization_is_an_error():
    with pytest.raises(CommandError, match="There is no organization 987654"):
        call_command("audit_ledger", "--organization", "987654", stdout=StringIO())


def test_query_count_does_not_grow_with_organizations():
    # Given 2 organizations, then 8, each with a grant and a consumption
    allowance = AllowanceFactory(limit=Decimal("1"))

    def add_orgs(n: int) -> None:
        for i in range(n):
            org = make_org(plan=allowance.plan)
            credits_grant(organization_id=org.pk, credits=Decimal("50"), now=T0)
            assert use(org, allowance.meter.key, "2", f"k{i}").status == 201

    add_orgs(2)
    with CaptureQueriesContext(connection) as few:
        assert audit() == "ledger OK: 2 organizations\n"
    add_orgs(6)
    with CaptureQueriesContext(connection) as many:
        assert audit() == "ledger OK: 8 organizations\n"
    # Then the audit ran the same, small number of queries
    assert len(many.captured_queries) == len(few.captured_queries)
    assert len(few.captured_queries) <= 13
