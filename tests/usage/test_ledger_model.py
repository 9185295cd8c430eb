"""The credit engine against an independent model, step by step (hypothesis stateful testing).

The model is plain Python: lots (remaining, expiry, priority, category), windows (used per window
start), reservations (what each holds where). Each rule calls the real service and the model, then
compares the answer; after every step the database is compared with the model and checked by
tests/invariants.py. Lazy work (lot expiry, expired holds) happens in the model exactly when a
service opens the organization's books, as the engine does.

Each example runs inside a savepoint of the test's transaction, rolled back in teardown, so
examples do not see each other's rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from dateutil.relativedelta import relativedelta
from django.db import transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from billing.models import CreditAccount, CreditLot, EntryKind, LedgerEntry
from billing.services import credits_grant, lots_expire_due
from tests.factories import T0, AllowanceFactory, MeterFactory, PlanFactory, make_org
from tests.invariants import LedgerInconsistentError, assert_ledger_consistent
from usage.models import AllowanceWindow, Reservation, UsageEvent
from usage.services import (
    UsageInput,
    reservation_commit,
    reservation_create,
    reservation_release,
    reservations_release_expired,
    usage_record,
)

ZERO = Decimal(0)
CREDITS_PER_UNIT = Decimal("2.5")
ROLLING_LIMIT, ROLLING_LENGTH = Decimal("2"), timedelta(hours=5)
PERIOD_LIMIT = Decimal("6")

quantities = st.sampled_from([Decimal("0.5"), Decimal("1"), Decimal("2"), Decimal("3"), Decimal("5")])
commit_quantities = st.sampled_from([Decimal("0"), Decimal("1"), Decimal("2.5"), Decimal("4"), Decimal("8")])
grant_credits = st.sampled_from(
    [Decimal("1"), Decimal("2.5"), Decimal("5"), Decimal("7.5"), Decimal("12"), Decimal("30")]
)
steps = st.sampled_from(
    [
        timedelta(minutes=20),
        timedelta(hours=1),
        timedelta(hours=3),
        timedelta(hours=5),
        timedelta(days=1),
        timedelta(days=4),
        timedelta(days=12),
    ]
)


def money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


@dataclass
class MLot:
    id: int
    remaining: Decimal
    expires_at: datetime | None
    priority: int
    category: str
    created_at: datetime

    def draw_key(self) -> tuple:
        return (
            self.priority,
            self.expires_at is None,
            self.expires_at or datetime.max.replace(tzinfo=T0.tzinfo),
            0 if self.category == "promotional" else 1,
            self.created_at,
            self.id,
        )


@dataclass
class MReservation:
    id: int
    quantity: Decimal
    status: str
    expires_at: datetime
    windows: list[tuple[int, datetime, Decimal]] = field(default_factory=list)
    lots: list[tuple[int, Decimal]] = field(default_factory=list)
    committed: Decimal | None = None
    first: tuple[UsageInput, int, int, dict] | None = None  # (request, ttl, status, body) of the first answer


@dataclass
class MEval:
    from_allowance: Decimal
    credits: Decimal
    allowed: bool
    shortfall: Decimal = ZERO


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.savepoint = transaction.savepoint()
        meter = MeterFactory(credits_per_unit=CREDITS_PER_UNIT)
        plan = PlanFactory()
        self.rolling = AllowanceFactory(
            plan=plan,
            meter=meter,
            limit=ROLLING_LIMIT,
            window_kind="rolling",
            window_seconds=int(ROLLING_LENGTH.total_seconds()),
        ).pk
        self.period = AllowanceFactory(plan=plan, meter=meter, limit=PERIOD_LIMIT).pk
        self.meter_key = meter.key
        self.org_id = make_org(plan=plan, anchor=T0).pk
        self.now = T0
        self.lots: dict[int, MLot] = {}
        self.windows: dict[tuple[int, datetime], tuple[Decimal, Decimal, datetime]] = {}  # (limit, used, end)
        self.reservations: list[MReservation] = []
        self.history: list[tuple[UsageInput, int, dict]] = []  # usage calls and their first answer
        self.keys = 0

    def teardown(self) -> None:
        transaction.savepoint_rollback(self.savepoint)

    # The model ---------------------------------------------------------------------------------

    def balance(self) -> Decimal:
        return sum((lot.remaining for lot in self.lots.values()), ZERO)

    def expire_lots(self) -> None:
        for lot in self.lots.values():
            if lot.expires_at is not None and lot.expires_at <= self.now:
                lot.remaining = ZERO

    def lazy_work_pending(self) -> bool:
        return any(
            lot.expires_at is not None and lot.expires_at <= self.now and lot.remaining > 0
            for lot in self.lots.values()
        ) or any(r.status == "held" and r.expires_at <= self.now for r in self.reservations)

    def open_books(self) -> None:
        """What every engine call does first: expire due lots, then release due holds."""
        self.expire_lots()
        for r in sorted(self.reservations, key=lambda r: (r.expires_at, r.id)):
            if r.status == "held" and r.expires_at <= self.now:
                self.give_back(r)
                r.status = "expired"

    def give_back(self, r: MReservation) -> None:
        for allowance, start, amount in r.windows:
            limit, used, end = self.windows[(allowance, start)]
            self.windows[(allowance, start)] = (limit, max(used - amount, ZERO), end)
        for lot_id, amount in r.lots:
            lot = self.lots[lot_id]
            lot.remaining += amount
            if lot.expires_at is not None and lot.expires_at <= self.now:
                lot.remaining = ZERO

    def current_windows(self) -> list[tuple[int, datetime, datetime, Decimal, Decimal]]:
        """(allowance, start, end, limit, used) of the windows that count now, opened or not."""
        out = []
        rolling = [
            (key, value)
            for key, value in self.windows.items()
            if key[0] == self.rolling and key[1] <= self.now < value[2]
        ]
        if rolling:
            (_, start), (limit, used, end) = rolling[0]
            out.append((self.rolling, start, end, limit, used))
        else:
            out.append((self.rolling, self.now, self.now + ROLLING_LENGTH, ROLLING_LIMIT, ZERO))
        n = (self.now.year - T0.year) * 12 + self.now.month - T0.month
        while T0 + relativedelta(months=n) > self.now:
            n -= 1
        while T0 + relativedelta(months=n + 1) <= self.now:
            n += 1
        start, end = T0 + relativedelta(months=n), T0 + relativedelta(months=n + 1)
        limit, used, _ = self.windows.get((self.period, start), (PERIOD_LIMIT, ZERO, end))
        out.append((self.period, start, end, limit, used))
        return out

    def available(self) -> Decimal:
        return sum(
            (lot.remaining for lot in self.lots.values() if lot.expires_at is None or lot.expires_at > self.now), ZERO
        )

    def evaluate(self, quantity: Decimal, *, partial: bool = False) -> MEval:
        room = min(max(limit - used, ZERO) for _, _, _, limit, used in self.current_windows())
        from_allowance = min(quantity, room)
        cost = money((quantity - from_allowance) * CREDITS_PER_UNIT)
        if cost <= self.available():
            return MEval(from_allowance, cost, True)
        if partial:
            return MEval(from_allowance, self.available(), True, cost - self.available())
        return MEval(ZERO, ZERO, False)

    def apply(self, ev: MEval) -> tuple[list[tuple[int, datetime, Decimal]], list[tuple[int, Decimal]]]:
        windows = []
        if ev.from_allowance > 0:
            for allowance, start, end, limit, used in self.current_windows():
                self.windows[(allowance, start)] = (limit, used + ev.from_allowance, end)
                windows.append((allowance, start, ev.from_allowance))
        drawn = []
        left = ev.credits
        for lot in sorted(self.lots.values(), key=MLot.draw_key):
            if left <= 0:
                break
            if lot.remaining <= 0 or (lot.expires_at is not None and lot.expires_at <= self.now):
                continue
            take = min(left, lot.remaining)
            lot.remaining -= take
            drawn.append((lot.id, take))
            left -= take
        assert left == 0
        return windows, drawn

    def next_key(self, prefix: str) -> str:
        self.keys += 1
        return f"{prefix}{self.keys}"

    # Rules -------------------------------------------------------------------------------------

    @rule(
        credits=grant_credits,
        category=st.sampled_from(["promotional", "paid"]),
        priority=st.sampled_from([50, 100]),
        expires_in=st.none() | steps,
    )
    def grant(self, credits, category, priority, expires_in):
        expires_at = None if expires_in is None else self.now + expires_in
        lot = credits_grant(
            organization_id=self.org_id,
            credits=credits,
            now=self.now,
            category=category,
            priority=priority,
            expires_at=expires_at,
        )
        self.expire_lots()  # a grant opens the books (lot expiry) but not the engine (holds)
        self.lots[lot.pk] = MLot(lot.pk, credits, expires_at, priority, category, self.now)

    @rule(quantity=quantities)
    def consume(self, quantity):
        item = UsageInput(
            organization_id=self.org_id, meter=self.meter_key, quantity=quantity, idempotency_key=self.next_key("u")
        )
        outcome = usage_record(item=item, now=self.now)
        self.open_books()
        ev = self.evaluate(quantity)
        if ev.allowed:
            self.apply(ev)
            assert outcome.status == 201, outcome.body
            assert (Decimal(outcome.body["from_allowance"]), Decimal(outcome.body["credits_charged"])) == (
                ev.from_allowance,
                ev.credits,
            )
        else:
            assert outcome.status == 402, outcome.body
            assert outcome.body["error"]["code"] == "limit_reached"
        assert Decimal(outcome.body["credits"]["balance"]) == self.balance()
        self.history.append((item, outcome.status, outcome.body))

    @rule(quantity=quantities, ttl=st.sampled_from([600, 3600, 6 * 3600]))
    def reserve(self, quantity, ttl):
        item = UsageInput(
            organization_id=self.org_id, meter=self.meter_key, quantity=quantity, idempotency_key=self.next_key("r")
        )
        outcome = reservation_create(item=item, ttl_seconds=ttl, now=self.now)
        self.open_books()
        ev = self.evaluate(quantity)
        if not ev.allowed:
            assert outcome.status == 402, outcome.body
            reservation_id = Reservation.objects.get(
                organization_id=self.org_id, idempotency_key=item.idempotency_key
            ).pk
            self.reservations.append(
                MReservation(
                    reservation_id,
                    quantity,
                    "denied",
                    self.now + timedelta(seconds=ttl),
                    first=(item, ttl, outcome.status, outcome.body),
                )
            )
            return
        assert outcome.status == 201, outcome.body
        windows, drawn = self.apply(ev)
        assert (Decimal(outcome.body["from_allowance"]), Decimal(outcome.body["credits_held"])) == (
            ev.from_allowance,
            ev.credits,
        )
        self.reservations.append(
            MReservation(
                outcome.body["id"],
                quantity,
                "held",
                self.now + timedelta(seconds=ttl),
                windows,
                drawn,
                first=(item, ttl, outcome.status, outcome.body),
            )
        )

    @precondition(lambda self: self.reservations)
    @rule(data=st.data(), quantity=commit_quantities)
    def commit(self, data, quantity):
        r = data.draw(st.sampled_from(self.reservations), label="reservation")
        if r.status == "committed" and quantity != r.committed and self.lazy_work_pending():
            quantity = r.committed  # a 409 for another quantity writes nothing, not even lazy work
        outcome = reservation_commit(organization_id=self.org_id, reservation_id=r.id, quantity=quantity, now=self.now)
        self.open_books()
        if r.status == "held":
            self.give_back(r)
            ev = self.evaluate(quantity, partial=True)
            self.apply(ev)
            r.status, r.committed = "committed", quantity
            assert outcome.status == 200, outcome.body
            assert Decimal(outcome.body["shortfall_credits"]) == ev.shortfall
            assert Decimal(outcome.body["credits"]["balance"]) == self.balance()
        elif r.status == "committed" and quantity == r.committed:
            assert (outcome.status, outcome.replayed) == (200, True), outcome.body
        elif r.status == "committed":
            assert outcome.status == 409
            assert outcome.body["error"]["code"] == "reservation_already_committed"
        else:
            assert outcome.status == 409, outcome.body
            assert outcome.body["error"]["code"] == "reservation_not_held"

    @precondition(lambda self: self.reservations)
    @rule(data=st.data())
    def release(self, data):
        r = data.draw(st.sampled_from(self.reservations), label="reservation")
        if r.status in ("committed", "denied") and self.lazy_work_pending():
            return  # a 409 writes nothing, not even lazy work: nothing to compare
        outcome = reservation_release(organization_id=self.org_id, reservation_id=r.id, now=self.now)
        self.open_books()
        if r.status == "held":
            self.give_back(r)
            r.status = "released"
            assert (outcome.status, outcome.body["status"]) == (200, "released"), outcome.body
        elif r.status in ("released", "expired"):
            assert (outcome.status, outcome.replayed, outcome.body["status"]) == (200, True, r.status), outcome.body
        else:
            assert outcome.status == 409, outcome.body

    @rule(step=steps)
    def advance_clock(self, step):
        self.now += step

    @precondition(
        lambda self: any(lot.expires_at is not None and lot.expires_at > self.now for lot in self.lots.values())
    )
    @rule()
    def expire(self):
        self.now = min(
            lot.expires_at for lot in self.lots.values() if lot.expires_at is not None and lot.expires_at > self.now
        ) + timedelta(seconds=1)
        lots_expire_due(now=self.now)
        self.expire_lots()

    @rule()
    def sweep_holds(self):
        due = any(r.status == "held" and r.expires_at <= self.now for r in self.reservations)
        reservations_release_expired(now=self.now)
        if due:
            self.open_books()

    @precondition(lambda self: self.history)
    @rule(data=st.data(), same=st.booleans())
    def replay(self, data, same):
        item, status, body = data.draw(st.sampled_from(self.history), label="earlier call")
        if not same:
            item = UsageInput(
                organization_id=item.organization_id,
                meter=item.meter,
                quantity=item.quantity + 1,
                idempotency_key=item.idempotency_key,
            )
        outcome = usage_record(item=item, now=self.now)
        self.open_books()
        if same:
            assert (outcome.status, outcome.body, outcome.replayed) == (status, body, True)
        else:
            assert outcome.status == 422
            assert outcome.body["error"]["code"] == "idempotency_key_reused"

    @precondition(lambda self: self.reservations)
    @rule(data=st.data(), same=st.booleans())
    def replay_reservation(self, data, same):
        r = data.draw(st.sampled_from(self.reservations), label="reservation")
        assert r.first is not None
        item, ttl, status, body = r.first
        if self.lazy_work_pending():
            return  # a replay writes nothing, not even lazy work: nothing to compare
        outcome = reservation_create(item=item, ttl_seconds=ttl if same else ttl + 1, now=self.now)
        if same:
            assert (outcome.status, outcome.body, outcome.replayed) == (status, body, True)
        else:
            assert outcome.status == 422
            assert outcome.body["error"]["code"] == "idempotency_key_reused"

    # After every step --------------------------------------------------------------------------

    @invariant()
    def database_matches_model(self):
        account = CreditAccount.objects.get(organization_id=self.org_id)
        assert account.balance == self.balance()
        lots = dict(CreditLot.objects.filter(organization_id=self.org_id).values_list("id", "remaining"))
        assert lots == {lot.id: lot.remaining for lot in self.lots.values()}
        windows = {
            (a, s): used
            for a, s, used in AllowanceWindow.objects.filter(organization_id=self.org_id).values_list(
                "allowance_id", "start", "used"
            )
        }
        assert windows == {key: used for key, (_, used, _) in self.windows.items()}
        statuses = dict(Reservation.objects.filter(organization_id=self.org_id).values_list("id", "status"))
        assert statuses == {r.id: r.status for r in self.reservations}
        assert_ledger_consistent(self.org_id)


@pytest.mark.django_db
def test_engine_matches_the_model_step_by_step():
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=int(os.environ.get("LEDGER_MODEL_EXAMPLES", "40")),
            stateful_step_count=int(os.environ.get("LEDGER_MODEL_STEPS", "25")),
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.mark.django_db
def test_credits_held_while_the_next_expiry_was_computed_still_expire():
    """A lot fully held by a reservation when the next expiry is recomputed, then given back,
    must still expire on time (found by the model; the engine once forgot it)."""
    machine = LedgerMachine()
    try:
        steps_taken = [
            lambda: machine.grant(
                credits=Decimal("2.5"), category="promotional", priority=100, expires_in=timedelta(days=12)
            ),
            # 3 units: 2 from the windows, 2.5 credits, the whole first lot
            lambda: machine.reserve(quantity=Decimal("3"), ttl=6 * 3600),
            lambda: machine.grant(credits=Decimal("1"), category="paid", priority=100, expires_in=timedelta(days=1)),
            machine.expire,  # day 1: the small lot expires while the first is fully held
            machine.sweep_holds,  # the hold expired at 6 hours: its 2.5 credits go back to the first lot
            machine.expire,  # day 12: the first lot expires
        ]
        machine.database_matches_model()
        for step in steps_taken:
            step()
            machine.database_matches_model()
        assert machine.balance() == ZERO
    finally:
        machine.teardown()


# The checker itself must be able to fail ------------------------------------------------------


@pytest.fixture
def spent_org(db):
    """An organization with a grant, an allowed usage event and a held reservation."""
    meter = MeterFactory(credits_per_unit=Decimal("5"))
    allowance = AllowanceFactory(meter=meter, limit=Decimal("3"))
    org = make_org(plan=allowance.plan)
    credits_grant(organization_id=org.pk, credits=Decimal("50"), now=T0)
    held = reservation_create(
        item=UsageInput(organization_id=org.pk, meter=meter.key, quantity=Decimal("4"), idempotency_key="b"),
        ttl_seconds=600,
        now=T0,
    )
    used = usage_record(
        item=UsageInput(organization_id=org.pk, meter=meter.key, quantity=Decimal("3"), idempotency_key="a"), now=T0
    )
    assert (held.status, held.body["from_allowance"], held.body["credits_held"]) == (201, "3", "5")
    assert (used.status, used.body["from_allowance"], used.body["credits_charged"]) == (201, "0", "15")
    return org


def test_checker_passes_a_clean_ledger(spent_org):
    assert_ledger_consistent(spent_org.pk)


@pytest.mark.parametrize(
    ("corrupt", "complaint"),
    [
        (lambda org: CreditLot.objects.filter(organization=org).update(remaining=Decimal("31")), "entries sum to 30"),
        (
            lambda org: CreditAccount.objects.filter(organization=org).update(balance=Decimal("29")),
            "account balance is 29",
        ),
        (
            lambda org: LedgerEntry.objects.filter(organization=org, kind=EntryKind.CONSUME).update(
                balance_after=Decimal("41")
            ),
            "running sum 30",
        ),
        (
            lambda org: Reservation.objects.filter(organization=org).update(status="released"),
            r"ledger holds 5\.0000, expected 0",
        ),
        (
            lambda org: UsageEvent.objects.filter(organization=org).update(credits_charged=Decimal("5")),
            r"ledger drew 15\.0000, event says 5\.0000",
        ),
        (
            lambda org: AllowanceWindow.objects.filter(organization=org).update(used=Decimal("0")),
            "< 3 held by reservations",
        ),
    ],
    ids=["lot-remaining", "balance", "balance-after", "reservation-status", "event-charge", "window-hold"],
)
def test_checker_names_each_break(spent_org, corrupt, complaint):
    corrupt(spent_org)
    with pytest.raises(LedgerInconsistentError, match=complaint):
        assert_ledger_consistent(spent_org.pk)
