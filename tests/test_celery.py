"""The Celery app and its beat schedule: every scheduled task exists, runs, and is safe to run twice."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from billing.models import CreditLot, EntryKind, LedgerEntry
from billing.services import credits_grant
from config.celery import app
from core.clock import now as clock_now
from plans.models import WindowKind
from tests.factories import AllowanceFactory, UserFactory, make_org
from usage.models import AllowanceWindow, Notice, NoticeKind, Reservation, ReservationStatus
from usage.services import UsageInput, reservation_create, usage_record

SCHEDULE = app.conf.beat_schedule


@pytest.fixture
def tasks(db):
    """The task registry as a worker sees it after start-up (it autodiscovers every app's tasks.py;
    Celery's Django fixup also runs the system checks then, and dj-stripe's read the database)."""
    app.loader.import_default_modules()
    return app.tasks


def run_task(tasks, name: str) -> int:
    """Run a registered task in this process, as a worker would (eagerly, through Celery)."""
    result = tasks[name].apply()
    assert result.successful(), result.traceback
    return result.get()


def test_beat_schedule_names_only_registered_tasks(tasks):
    # given the app with every task module imported
    # when the schedule is read
    missing = sorted(entry["task"] for entry in SCHEDULE.values() if entry["task"] not in tasks)

    # then every entry's task is registered
    assert missing == []


def test_beat_schedule_holds_the_credit_engine_jobs():
    tasks = {entry["task"] for entry in SCHEDULE.values()}

    assert {
        "billing.tasks.lots_expire_due",
        "usage.tasks.reservations_release_expired",
        "usage.tasks.windows_close_finished",
        "usage.tasks.notices_send_pending",
    } <= tasks


def test_scheduled_tasks_ack_late(tasks):
    # a worker lost mid-task leaves the message for another worker (the tasks are idempotent)
    late = {entry["task"]: tasks[entry["task"]].acks_late for entry in SCHEDULE.values()}

    assert late == dict.fromkeys(late, True)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted({entry["task"] for entry in SCHEDULE.values()}))
def test_every_scheduled_task_runs_on_an_empty_database(tasks, name):
    # given nothing to do; when the task runs twice; then it does nothing, twice, without error
    assert run_task(tasks, name) == 0
    assert run_task(tasks, name) == 0


@pytest.mark.django_db
def test_lots_expire_due_expires_once(tasks):
    # given an organization with a lot that expired an hour ago and one that has not expired
    at = clock_now()
    allowance = AllowanceFactory(limit=Decimal("1"))
    org = make_org(plan=allowance.plan, anchor=at - timedelta(days=3))
    expired = credits_grant(
        organization_id=org.pk, credits=Decimal("30"), now=at - timedelta(days=2), expires_at=at - timedelta(hours=1)
    )
    kept = credits_grant(organization_id=org.pk, credits=Decimal("12"), now=at - timedelta(days=2))

    # when the expiry task runs, and runs again
    first = run_task(tasks, "billing.tasks.lots_expire_due")
    second = run_task(tasks, "billing.tasks.lots_expire_due")

    # then the expired lot is emptied by one expiry entry, and the second run touches nothing
    assert (first, second) == (1, 0)
    expired.refresh_from_db()
    kept.refresh_from_db()
    assert (expired.remaining, kept.remaining) == (Decimal("0"), Decimal("12"))
    entries = list(
        LedgerEntry.objects.filter(lot=expired, kind=EntryKind.EXPIRE).values_list("amount", "balance_after")
    )
    assert entries == [(Decimal("-30"), Decimal("12"))]


@pytest.mark.django_db
def test_expired_lot_is_not_drawn_when_the_task_never_ran(tasks):
    # given a lot that expired an hour ago, and no expiry task run
    at = clock_now()
    allowance = AllowanceFactory(limit=Decimal("0"))
    org = make_org(plan=allowance.plan, anchor=at - timedelta(days=3))
    credits_grant(
        organization_id=org.pk, credits=Decimal("30"), now=at - timedelta(days=2), expires_at=at - timedelta(hours=1)
    )

    # when usage that only credits could pay for arrives
    outcome = usage_record(
        item=UsageInput(organization_id=org.pk, meter=allowance.meter.key, quantity=Decimal("1"), idempotency_key="k1"),
        now=at,
    )

    # then it is denied, the lot is expired lazily, and a later task run finds nothing left to do
    assert outcome.status == 402
    assert CreditLot.objects.get(organization=org).remaining == Decimal("0")
    assert run_task(tasks, "billing.tasks.lots_expire_due") == 0


@pytest.mark.django_db
def test_reservations_release_expired_releases_once(tasks):
    # given a hold of 2 units (all from the allowance) that expired ten minutes ago
    at = clock_now()
    allowance = AllowanceFactory(limit=Decimal("10"))
    org = make_org(plan=allowance.plan, anchor=at - timedelta(days=3))
    held = reservation_create(
        item=UsageInput(organization_id=org.pk, meter=allowance.meter.key, quantity=Decimal("2"), idempotency_key="r1"),
        ttl_seconds=600,
        now=at - timedelta(minutes=20),
    )
    assert held.status == 201

    # when the sweep runs, and runs again
    first = run_task(tasks, "usage.tasks.reservations_release_expired")
    second = run_task(tasks, "usage.tasks.reservations_release_expired")

    # then the hold is expired and its allowance is free again; the second run does nothing
    assert (first, second) == (1, 0)
    reservation = Reservation.objects.get(pk=held.body["id"])
    assert reservation.status == ReservationStatus.EXPIRED
    window = AllowanceWindow.objects.get(organization=org, allowance=allowance)
    assert window.used == Decimal("0")


@pytest.mark.django_db
def test_finished_window_is_closed_and_its_owner_told_once(tasks, mailoutbox):
    # given a 5-hour window that was used 6 hours ago, in an organization with an owner
    at = clock_now()
    owner = UserFactory(email="owner@example.com")
    allowance = AllowanceFactory(limit=Decimal("10"), window_kind=WindowKind.ROLLING, window_seconds=5 * 3600)
    org = make_org(plan=allowance.plan, anchor=at - timedelta(days=3), owner=owner)
    used = usage_record(
        item=UsageInput(organization_id=org.pk, meter=allowance.meter.key, quantity=Decimal("4"), idempotency_key="u1"),
        now=at - timedelta(hours=6),
    )
    assert used.status == 201

    # when the close task runs twice, then the send task runs twice
    closed = (
        run_task(tasks, "usage.tasks.windows_close_finished"),
        run_task(tasks, "usage.tasks.windows_close_finished"),
    )
    sent = (run_task(tasks, "usage.tasks.notices_send_pending"), run_task(tasks, "usage.tasks.notices_send_pending"))

    # then one window was closed, one "allowance reset" notice was made and one email sent
    assert closed == (1, 0)
    assert sent == (1, 0)
    window = AllowanceWindow.objects.get(organization=org)
    assert window.closed_at is not None
    notices = list(Notice.objects.filter(organization=org).values_list("kind", flat=True))
    assert notices == [NoticeKind.ALLOWANCE_RESET]
    assert [(m.to, m.subject) for m in mailoutbox] == [
        (["owner@example.com"], f"Your {allowance.window_label} allowance for {allowance.meter.name} has reset")
    ]
