"""usage_record_batch's pipelined transaction on PostgreSQL (core.sql.atomic_pipeline): what a failure
leaves behind, and what the reads sent after the lock see when the lock had to wait.

The failures are forced in the write phase, whose statements are only answered when the pipeline
ends: a CHECK violation in the ledger statement (the last write), a duplicate id in the events
statement (the middle one), and in the read phase a lock that cannot be had (the first read).
The last two tests hold an organization's lock in one thread, see another thread wait for it, and
commit: what the holder wrote (events, windows, lots, plan) must be what the waiter decides on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from django.db import IntegrityError, OperationalError, connection, transaction

from billing.models import CreditAccount, LedgerEntry
from billing.services import credits_grant, subscription_change
from billing.services.book import CreditBook
from core.sql import Sent, in_pipeline
from tests.factories import T0, AllowanceFactory, MeterFactory, make_org
from tests.invariants import assert_ledger_consistent
from tests.usage.engine_support import D, item, lots, snapshot
from usage.models import UsageEvent
from usage.services import record as record_module
from usage.services import usage_record, usage_record_batch

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.usefixtures("require_postgres"),
]

NOW = T0 + timedelta(seconds=1)
T = TypeVar("T")


@pytest.fixture(autouse=True)
def engine_path(settings):
    """These tests are about the engine's pipelined transaction: usage_record takes it, not the
    one-statement fast path (tests/usage/test_record_fast.py covers that one)."""
    settings.USAGE_FAST_PATH = False


U = TypeVar("U")


@pytest.fixture
def world():
    """An organization with 4 included units a period, 5 credits a unit beyond, and one lot of 100."""
    allowance = AllowanceFactory(limit=D(4), meter=MeterFactory(credits_per_unit=D(5)))
    org = make_org(plan=allowance.plan)
    credits_grant(organization_id=org.pk, credits=D(100), now=T0)
    return org, allowance.meter


def _state(org) -> dict[str, object]:
    return {**snapshot(org), "events": list(UsageEvent.objects.filter(organization=org).values_list("id", flat=True))}


def _lot_goes_negative(monkeypatch) -> None:
    """Make the book write a negative remaining, as a bug would: the CHECK must refuse it."""
    draw = CreditBook.draw

    def broken_draw(self, amount, **kwargs):
        drawn = draw(self, amount, **kwargs)
        for lot in self._dirty.values():
            lot.remaining = D(-1)
        return drawn

    monkeypatch.setattr(CreditBook, "draw", broken_draw)


def _event_id_taken(monkeypatch, taken: int) -> None:
    """Reserve an event id that an existing event already has: the events insert must clash."""

    def reserve(count: int) -> Sent:
        return Sent("SELECT %s::bigint FROM generate_series(1, %s)", [taken, count])

    monkeypatch.setattr(record_module, "event_ids_send", reserve)


def _assert_connection_clean() -> None:
    assert not in_pipeline()
    assert connection.connection.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
    assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert not connection.in_atomic_block


def test_a_check_violation_in_the_last_write_undoes_the_earlier_writes_and_the_next_request_works(world, monkeypatch):
    # Given an organization where one request already opened the window (3 of 4 units used)
    org, meter = world
    first = usage_record(item=item(org, meter, 3, "first"), now=NOW)
    assert first.status == 201
    before = _state(org)

    # When a request that uses the last included unit and draws 10 credits fails in its ledger
    # statement (after the window update and the event insert were sent)
    _lot_goes_negative(monkeypatch)
    with pytest.raises(IntegrityError) as failure:
        usage_record(item=item(org, meter, 3, "fails"), now=NOW)

    # Then the error is Django's IntegrityError caused by the CHECK, and nothing was written
    assert isinstance(failure.value.__cause__, psycopg.errors.CheckViolation)
    assert "lot_remaining_nonnegative" in str(failure.value)
    assert _state(org) == before
    _assert_connection_clean()

    # and the same request, on the same connection, then goes through as if nothing happened
    monkeypatch.undo()
    again = usage_record(item=item(org, meter, 3, "fails"), now=NOW)
    assert (again.status, again.replayed) == (201, False)
    assert (again.body["from_allowance"], again.body["credits_charged"]) == ("1", "10")
    assert again.body["credits"] == {"balance": "90"}
    event = UsageEvent.objects.get(organization=org, idempotency_key="fails")
    assert event.pk == again.body["id"]
    assert list(LedgerEntry.objects.filter(organization=org, kind="consume").values_list("amount", "reference")) == [
        (D(-10), f"usage:{event.pk}")
    ]
    assert_ledger_consistent(org.pk)


def test_a_duplicate_event_id_fails_the_batch_with_nothing_written_and_the_next_batch_works(world, monkeypatch):
    # Given an organization with one recorded event
    org, meter = world
    first = usage_record(item=item(org, meter, 1, "first"), now=NOW)
    assert first.status == 201
    before = _state(org)

    # When a batch of two (a window update, then events, then a draw of 5 credits) is given the
    # id of that event for its own events
    _event_id_taken(monkeypatch, first.body["id"])
    with pytest.raises(IntegrityError) as failure:
        usage_record_batch(items=[item(org, meter, 3, "a"), item(org, meter, 1, "b")], now=NOW)

    # Then it fails on the primary key, as Django's IntegrityError, and nothing was written
    assert isinstance(failure.value.__cause__, psycopg.errors.UniqueViolation)
    assert _state(org) == before
    _assert_connection_clean()

    # and the same batch then goes through on the same connection, with ids of its own
    monkeypatch.undo()
    outcomes = usage_record_batch(items=[item(org, meter, 3, "a"), item(org, meter, 1, "b")], now=NOW)
    assert [(o.status, o.body["from_allowance"], o.body["credits_charged"]) for o in outcomes] == [
        (201, "3", "0"),
        (201, "0", "5"),
    ]
    ids = {o.body["id"] for o in outcomes}
    assert len(ids) == 2 and first.body["id"] not in ids
    assert set(UsageEvent.objects.filter(organization=org).values_list("id", flat=True)) == ids | {first.body["id"]}
    assert list(LedgerEntry.objects.filter(organization=org, kind="consume").values_list("reference", flat=True)) == [
        f"usage:{outcomes[1].body['id']}"
    ]
    assert_ledger_consistent(org.pk)


def test_a_failure_inside_an_outer_transaction_rolls_back_to_its_savepoint_only(world, monkeypatch):
    # Given an outer transaction that records one event, then a request that fails in its ledger
    # statement, then another request
    org, meter = world
    with transaction.atomic():
        kept = usage_record(item=item(org, meter, 3, "kept"), now=NOW)
        _lot_goes_negative(monkeypatch)
        with pytest.raises(IntegrityError):
            usage_record(item=item(org, meter, 3, "fails"), now=NOW)
        monkeypatch.undo()
        after = usage_record(item=item(org, meter, 2, "after"), now=NOW)

    # Then the outer transaction committed the first and the last, and nothing of the failed one
    assert (kept.status, after.status) == (201, 201)
    assert (after.body["from_allowance"], after.body["credits_charged"]) == ("1", "5")
    assert sorted(UsageEvent.objects.filter(organization=org).values_list("idempotency_key", flat=True)) == [
        "after",
        "kept",
    ]
    assert CreditAccount.objects.get(organization=org).balance == D(95)
    _assert_connection_clean()
    assert_ledger_consistent(org.pk)


def _connect_apart() -> psycopg.Connection:
    """A second connection to the test database, outside Django."""
    settings = connection.settings_dict
    return psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
    )


def test_a_lock_that_cannot_be_had_fails_the_read_phase_and_the_next_request_works(world):
    # Given another session holding the organization's account lock, and a lock timeout
    org, meter = world
    before = _state(org)
    other = _connect_apart()
    try:
        other.execute("SELECT 1 FROM billing_creditaccount WHERE organization_id = %s FOR UPDATE", [org.pk])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")

        # When a request is recorded
        with pytest.raises(OperationalError) as failure:
            usage_record(item=item(org, meter, 1, "waits"), now=NOW)
    finally:
        other.rollback()
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")

    # Then the lock statement's own error is raised (not one of the reads that followed it),
    # as Django's OperationalError, and nothing was written
    assert isinstance(failure.value.__cause__, psycopg.errors.LockNotAvailable)
    assert _state(org) == before
    _assert_connection_clean()

    # and once the lock is free the same request goes through on the same connection
    done = usage_record(item=item(org, meter, 1, "waits"), now=NOW)
    assert (done.status, done.body["from_allowance"]) == (201, "1")
    assert_ledger_consistent(org.pk)


def _wait_for_lock_wait(pid: int, *, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    with _connect_apart() as watcher:
        watcher.autocommit = True
        while time.monotonic() < deadline:
            row = watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
            if row is not None and row[0] == "Lock":
                return True
            time.sleep(0.02)
    return False


def _while_the_lock_is_held(
    holder_work: Callable[[], T], waiter_work: Callable[[], U]
) -> tuple[T, U, bool, dict[str, BaseException]]:
    """Run holder_work in a transaction that then keeps its locks, start waiter_work in another
    thread, and commit the holder once the waiter is seen waiting for a lock. Returns both results,
    whether the waiter was seen waiting, and any exceptions by role."""
    holder_done, release = threading.Event(), threading.Event()
    waiter_pid: list[int] = []
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def holder() -> None:
        try:
            with transaction.atomic():
                results["holder"] = holder_work()
                holder_done.set()
                if not release.wait(30):
                    raise TimeoutError("never released")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors["holder"] = exc
            holder_done.set()
        finally:
            connection.close()

    def waiter() -> None:
        try:
            holder_done.wait(30)
            connection.ensure_connection()
            waiter_pid.append(connection.connection.info.backend_pid)
            results["waiter"] = waiter_work()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors["waiter"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=holder, daemon=True), threading.Thread(target=waiter, daemon=True)]
    for thread in threads:
        thread.start()
    holder_done.wait(30)
    deadline = time.monotonic() + 20
    while not waiter_pid and time.monotonic() < deadline:
        time.sleep(0.01)
    waited = bool(waiter_pid) and _wait_for_lock_wait(waiter_pid[0])
    release.set()  # the holder commits
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return results.get("holder"), results.get("waiter"), waited, errors  # type: ignore[return-value]


def test_reads_sent_after_a_lock_that_waited_see_what_the_holder_committed(world):
    # Given a transaction that recorded 6 units under key "held" (4 included, 10 credits drawn:
    # it opened the window and changed the lot) and still holds the lock,
    # When another request waits for that lock: a replay of "held" and 2 new units under "new"
    org, meter = world
    held, (replay, new), waited, errors = _while_the_lock_is_held(
        lambda: usage_record(item=item(org, meter, 6, "held"), now=NOW),
        lambda: usage_record_batch(items=[item(org, meter, 6, "held"), item(org, meter, 2, "new")], now=NOW),
    )

    # Then the waiter really waited for the lock, and nothing failed
    assert waited
    assert errors == {}
    # and its idempotency read saw the holder's event: a replay of the same answer
    assert (replay.status, replay.replayed, replay.body) == (201, True, held.body)
    # and its window read saw the window the holder opened and filled (no room left, no clash),
    # and its lot read saw the lot after the holder's draw (90 left, not 100)
    assert (new.status, new.replayed) == (201, False)
    assert (new.body["from_allowance"], new.body["credits_charged"]) == ("0", "10")
    assert new.body["credits"] == {"balance": "80"}
    assert [(w["used"], w["remaining"]) for w in new.body["windows"]] == [("4", "0")]
    assert sorted(UsageEvent.objects.filter(organization=org).values_list("idempotency_key", flat=True)) == [
        "held",
        "new",
    ]
    assert CreditAccount.objects.get(organization=org).balance == D(80)
    assert [remaining for _, remaining in lots(org)] == [D(80)]
    assert_ledger_consistent(org.pk)


def test_a_request_that_waited_for_a_plan_change_decides_on_the_new_plan():
    # Given an organization on a plan with 4 units included, no credits, and a plan with 10
    meter = MeterFactory(credits_per_unit=D(5))
    small = AllowanceFactory(limit=D(4), meter=meter)
    large = AllowanceFactory(limit=D(10), meter=meter)
    org = make_org(plan=small.plan)

    # When the plan changes under the organization's lock (as subscription_change promises: "no
    # usage decision straddles the change") while a request for 6 units waits for that lock
    # (the lock statement's own join would still show the old plan: EvalPlanQual re-reads only
    # the locked row, so the plan must be read by a statement of its own, after the lock)
    _, outcome, waited, errors = _while_the_lock_is_held(
        lambda: subscription_change(organization_id=org.pk, plan_key=large.plan.key, now=NOW),
        lambda: usage_record(item=item(org, meter, 6, "after-change"), now=NOW),
    )

    # Then the request waited, and was decided on the new plan: 6 of its 10 units
    assert waited
    assert errors == {}
    assert (outcome.status, outcome.body["plan"], outcome.body["from_allowance"]) == (201, large.plan.key, "6")
    assert [(w["allowance"], w["used"]) for w in outcome.body["windows"]] == [(large.pk, "6")]


def test_the_commit_goes_with_the_writes_when_the_transaction_is_outermost(world, monkeypatch):
    # Given psycopg's commit watched (Django's own commit calls it too, after the pipeline)
    org, meter = world
    connection.ensure_connection()
    pg = connection.connection
    commits: list[psycopg.pq.PipelineStatus] = []
    original = pg.commit

    def watched() -> None:
        commits.append(pg.pgconn.pipeline_status)
        original()

    monkeypatch.setattr(pg, "commit", watched)
    # When a request is recorded in its own transaction
    out = usage_record(item=item(org, meter, "1", "k1"), now=NOW)
    # Then COMMIT was sent inside the pipeline, with the writes; Django's later commit found nothing to do
    assert out.status == 201
    assert commits == [psycopg.pq.PipelineStatus.ON, psycopg.pq.PipelineStatus.OFF]
    assert connection.connection.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert UsageEvent.objects.filter(organization=org).count() == 1
    _assert_connection_clean()


def test_a_batch_that_fails_in_its_second_group_keeps_the_first_and_a_retry_finishes_it(world, monkeypatch):
    # Given three organizations, committed in groups of one, and the second group failing once
    org, meter = world
    others = [make_org(plan=org.subscription.plan) for _ in range(2)]
    orgs = sorted([org, *others], key=lambda o: o.pk)
    monkeypatch.setattr(record_module, "ORGS_PER_TRANSACTION", 1)
    batch = [item(o, meter, "1", "k") for o in orgs]
    real_group = record_module._record_group
    calls = []

    def failing_second(items, digests, **kwargs):
        calls.append(items[0].organization_id)
        if len(calls) == 2:
            raise OperationalError("the database went away")
        return real_group(items, digests, **kwargs)

    monkeypatch.setattr(record_module, "_record_group", failing_second)
    # When the batch runs: the first group is committed, the error reaches the caller
    with pytest.raises(OperationalError):
        usage_record_batch(items=batch, now=NOW)
    assert [UsageEvent.objects.filter(organization=o).count() for o in orgs] == [1, 0, 0]
    # Then a retry of the same batch replays the first and records the others
    monkeypatch.setattr(record_module, "_record_group", real_group)
    outs = usage_record_batch(items=batch, now=NOW)
    assert [(o.status, o.replayed) for o in outs] == [(201, True), (201, False), (201, False)]
    assert [UsageEvent.objects.filter(organization=o).count() for o in orgs] == [1, 1, 1]
    for o in orgs:
        assert_ledger_consistent(o.pk)
