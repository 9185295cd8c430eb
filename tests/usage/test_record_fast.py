"""usage_record's one-statement fast path (usage/sql/record_fast_v2.sql via usage.services.fast)
against the Python engine it stands in for: the same answers and the same database effects.

The differential test builds one world twice (two organizations on the same plan and meter, with
the same grants in the same order), runs the same steps on both at the same `now` (one with
settings.USAGE_FAST_PATH on, the other with it off) and, after every step, compares the answers
and every row either could have written: once for usage_record (usage_record_fast), once with batches
mixed in (usage_record_batch: usage_record_fast_batch, then the engine for the rest in the same
transaction). RECORD_FAST_EXAMPLES sets how many worlds each tries (80).

The plain tests call the function directly (usage.services.fast.record_one): what it must leave to
the engine (it returns None having written nothing), a replay, and what it writes besides the event
(threshold and credits notices, the auto top-up it asks for, the window's name).

PostgreSQL only (the function is PL/pgSQL).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as settings_module
from django.db import connection, transaction
from django.test import override_settings
from django.utils import translation
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from billing.models import CreditAccount, CreditLot, LedgerEntry
from billing.services import credits_grant, spend_cap_set
from plans.models import Overage, WindowKind
from plans.selectors import catalogue, catalogue_clear
from tests.factories import T0, AllowanceFactory, MeterFactory, PlanFactory, make_org
from tests.invariants import assert_ledger_consistent
from tests.usage.engine_support import D, item
from usage.models import AllowanceWindow, Notice, UsageEvent
from usage.services import Outcome, UsageInput, fast, usage_record, usage_record_batch
from usage.services import engine as engine_module
from usage.services import record as record_module
from usage.services.record import request_hash

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.postgres,
    pytest.mark.usefixtures("require_postgres"),
]

H = timedelta(hours=1)
FIVE_HOURS = 5 * 3600
SEVEN_DAYS = 7 * 86400
NOW = T0 + timedelta(seconds=1)


# Reading an organization's rows, with its own ids replaced by positions -----------------------------


@dataclass(frozen=True)
class Ids:
    """An organization's ids and what they become when compared with its twin's: lots and events by
    their position in creation (id) order."""

    org: int
    lots: dict[int, int]
    events: dict[int, int]

    @classmethod
    def of(cls, org_id: int) -> Ids:
        lot_ids = CreditLot.objects.filter(organization_id=org_id).order_by("id").values_list("id", flat=True)
        event_ids = UsageEvent.objects.filter(organization_id=org_id).order_by("id").values_list("id", flat=True)
        return cls(
            org_id,
            {pk: n for n, pk in enumerate(lot_ids)},
            {pk: n for n, pk in enumerate(event_ids)},
        )

    def reference(self, reference: str) -> str:
        kind, _, pk = reference.partition(":")
        if kind == "usage" and pk.isdigit():
            return f"usage:<event {self.events[int(pk)]}>"
        if kind == "grant" and pk.isdigit():
            return f"grant:<lot {self.lots[int(pk)]}>"
        return reference

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        """A usage answer (or a stored response) with this organization's ids replaced."""

        def walk(value: Any, key: str | None = None) -> Any:
            if isinstance(value, dict):
                return {k: walk(v, k) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            if key == "organization" and value == self.org:
                return "<org>"
            if key == "lot":
                return f"<lot {self.lots[value]}>"
            if key == "purchase_url" and isinstance(value, str):
                return value.replace(f"organization={self.org}", "organization=<org>")
            return value

        normal = walk(body)
        if "id" in normal:
            normal["id"] = f"<event {self.events[normal['id']]}>"
        return normal


def org_state(org_id: int) -> dict[str, object]:
    """Every row a usage event may write or change, comparable across twin organizations."""
    ids = Ids.of(org_id)
    account = CreditAccount.objects.get(organization_id=org_id)
    ledger = (
        LedgerEntry.objects.filter(organization_id=org_id)
        .order_by("id")
        .values_list("kind", "lot_id", "amount", "balance_after", "reference", "reason", "actor_id", "created_at")
    )
    return {
        "windows": list(
            AllowanceWindow.objects.filter(organization_id=org_id)
            .order_by("allowance_id", "start")
            .values_list("allowance_id", "start", "end", "limit", "used", "closed_at")
        ),
        "lots": [
            (ids.lots[pk], *rest)
            for pk, *rest in CreditLot.objects.filter(organization_id=org_id)
            .order_by("id")
            .values_list("id", "category", "priority", "granted", "remaining", "effective_at", "expires_at")
        ],
        "ledger": [
            (kind, ids.lots[lot_id], amount, balance_after, ids.reference(reference), reason, actor_id, created_at)
            for kind, lot_id, amount, balance_after, reference, reason, actor_id, created_at in ledger
        ],
        "account": {
            "balance": account.balance,
            "spend_month": account.spend_month,
            "spend_month_total": account.spend_month_total,
            "monthly_spend_cap": account.monthly_spend_cap,
            "next_lot_expiry": account.next_lot_expiry,
            "next_hold_expiry": account.next_hold_expiry,
            "updated_at": account.updated_at,
        },
        "events": [
            (
                e.idempotency_key,
                e.kind,
                e.decision,
                e.http_status,
                e.quantity,
                e.from_allowance,
                e.credits_charged,
                e.request_hash,
                ids.body(e.response),
                e.metadata,
                e.meter_id,
                e.user_id,
                e.occurred_at,
                e.created_at,
            )
            for e in UsageEvent.objects.filter(organization_id=org_id).order_by("id")
        ],
        # By (kind, key): the engine writes a request's notices in the order it loaded the windows.
        "notices": sorted(
            Notice.objects.filter(organization_id=org_id).values_list(
                "kind", "dedupe_key", "payload", "created_at", "sent_at"
            ),
            key=lambda n: (n[0], n[1]),
        ),
    }


def normal_outcome(outcome: Outcome, org_id: int) -> tuple[int, str, bool]:
    """Status, body (ids replaced, as JSON text) and whether replayed. The keys' order counts, except
    in a replay: a stored answer comes back in jsonb's order (the engine's too, unless it still holds
    the answer it gave earlier in the same batch)."""
    body = Ids.of(org_id).body(outcome.body)
    text = json.dumps(body, sort_keys=True) if outcome.replayed else api_text(body)
    return outcome.status, text, outcome.replayed


def api_text(body: dict[str, Any]) -> str:
    """How the API writes an answer it holds as a dict (DRF's JSONRenderer: compact, UTF-8)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


# The world ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowanceSpec:
    seconds: int | None  # None: the billing period
    limit: Decimal
    block: bool


@dataclass(frozen=True)
class GrantSpec:
    credits: Decimal
    category: str
    priority: int
    effective_in: timedelta | None  # from the grant's `now`
    expires_in: timedelta | None  # from when it takes effect


@dataclass(frozen=True)
class WorldSpec:
    credits_per_unit: Decimal
    allowances: tuple[AllowanceSpec, ...]
    grants: tuple[GrantSpec, ...]
    spend_cap: Decimal | None
    topup_min: Decimal | None


def grant(org_id: int, spec: GrantSpec, *, now: datetime) -> None:
    effective_at = now + spec.effective_in if spec.effective_in is not None else None
    expires_at = (effective_at or now) + spec.expires_in if spec.expires_in is not None else None
    credits_grant(
        organization_id=org_id,
        credits=spec.credits,
        category=spec.category,
        priority=spec.priority,
        effective_at=effective_at,
        expires_at=expires_at,
        now=now,
    )


@dataclass
class Built:
    meter_key: str
    fast_org: int
    engine_org: int


def build(world: WorldSpec) -> Built:
    """One meter and plan, and two organizations on it with the same credits and settings."""
    meter = MeterFactory(credits_per_unit=world.credits_per_unit)
    plan = PlanFactory()
    for spec in world.allowances:
        AllowanceFactory(
            plan=plan,
            meter=meter,
            limit=spec.limit,
            window_kind=WindowKind.PERIOD if spec.seconds is None else WindowKind.ROLLING,
            window_seconds=spec.seconds,
            overage=Overage.BLOCK if spec.block else Overage.CREDITS,
        )
    org_ids = []
    for _ in range(2):
        org = make_org(plan=plan)
        # make_org's account carries the wall clock; from here on every write carries a `now` of ours.
        CreditAccount.objects.filter(organization=org).update(updated_at=T0)
        for grant_spec in world.grants:
            grant(org.pk, grant_spec, now=T0)
        if world.spend_cap is not None:
            spend_cap_set(organization_id=org.pk, cap=world.spend_cap, now=T0)
        if world.topup_min is not None:
            CreditAccount.objects.filter(organization=org).update(
                auto_topup_enabled=True,
                auto_topup_min_balance=world.topup_min,
                auto_topup_target_balance=world.topup_min + 100,
            )
        org_ids.append(org.pk)
    catalogue_clear()
    return Built(meter.key, *org_ids)


quantities = st.sampled_from([D("0.5"), D(1), D(2), D(3), D(4), D(7), D(12), D("0.3333")])
grant_specs = st.builds(
    GrantSpec,
    credits=st.sampled_from([D(150), D(20), D(5), D(1), D(150)]),
    category=st.sampled_from(["promotional", "paid"]),
    # Ties on priority and expiry, so that category, age and id decide the draw order too.
    priority=st.sampled_from([100, 100, 50]),
    effective_in=st.sampled_from([None, None, 2 * H]),
    expires_in=st.sampled_from([None, None, H, 5 * H, timedelta(days=2), timedelta(days=20)]),
)
GRANT_150 = GrantSpec(D(150), "paid", 100, None, None)
worlds = st.builds(
    WorldSpec,
    credits_per_unit=st.sampled_from([D(5), D(0), D(1), D("2.5")]),
    allowances=st.lists(
        st.builds(
            AllowanceSpec,
            seconds=st.sampled_from([FIVE_HOURS, 3600, SEVEN_DAYS, None]),
            limit=st.sampled_from([D(3), D(10), D(0), D(1), D(10)]),
            block=st.sampled_from([False, False, False, True]),
        ),
        max_size=2,
        unique_by=lambda a: a.seconds,
    ).map(tuple),
    # Mostly some credits, mostly no spend cap: most events are then decided by the fast path.
    grants=st.one_of(st.lists(grant_specs, min_size=1, max_size=3).map(tuple), st.just(()), st.just((GRANT_150,))),
    spend_cap=st.sampled_from([None, None, None, None, None, D(10), D(40), D(0)]),
    topup_min=st.sampled_from([None, None, D(10), D(100)]),
)
# A step: ("use", quantity, extra) | ("replay", earlier) | ("reuse", earlier, quantity)
#       | ("batch", [("new", quantity) | ("again", earlier, same body?, quantity), ...])
#       | ("advance", timedelta or "month" | "window_end" | "lot_expiry") | ("grant", GrantSpec)
# `earlier` picks (modulo) among the requests made so far; one with another body reuses its key.
use_steps = st.tuples(st.just("use"), quantities, st.sampled_from(["", "", "metadata", "occurred_at"]))
batch_items = st.one_of(
    st.tuples(st.just("new"), quantities),
    st.tuples(st.just("again"), st.integers(0, 5), st.sampled_from([True, True, False]), quantities),
    st.tuples(st.just("new"), quantities),
)
advances = st.sampled_from(
    [
        H,
        timedelta(milliseconds=250),
        timedelta(seconds=1),
        timedelta(minutes=59),
        5 * H,
        timedelta(days=1),
        timedelta(days=7),
        "month",
        "window_end",
        "lot_expiry",
    ]
)
single_steps = [
    use_steps,
    st.tuples(st.just("replay"), st.integers(0, 5)),
    st.tuples(st.just("reuse"), st.integers(0, 5), quantities),
    st.tuples(st.just("advance"), advances),
    use_steps,
    st.tuples(st.just("grant"), grant_specs),
    use_steps,
]
steps = st.lists(st.one_of(single_steps), min_size=1, max_size=10)
steps_with_batches = st.lists(
    st.one_of([*single_steps, st.tuples(st.just("batch"), st.lists(batch_items, min_size=2, max_size=4))]),
    min_size=1,
    max_size=10,
)


def next_time(org_id: int, clock: datetime, how: timedelta | str) -> datetime:
    if isinstance(how, timedelta):
        return clock + how
    if how == "month":  # the first instant of the next calendar month (UTC): spend counts anew
        return (clock.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=32)).replace(day=1)
    if how == "window_end":  # exactly when the soonest window ends (`end > now` is the test for current)
        ends = AllowanceWindow.objects.filter(organization_id=org_id, end__gt=clock).order_by("end")
        soonest = ends.values_list("end", flat=True).first()
        return soonest or clock + H
    # "lot_expiry": exactly when the soonest open lot expires
    expiries = CreditLot.objects.filter(organization_id=org_id, is_open=True, expires_at__gt=clock).order_by(
        "expires_at"
    )
    soonest = expiries.values_list("expires_at", flat=True).first()
    return soonest or clock + timedelta(days=1)


def another(use: UsageInput, quantity: Decimal) -> UsageInput:
    """The same key with another body."""
    return replace(use, quantity=quantity if quantity != use.quantity else use.quantity + 1)


@dataclass
class Tally:
    """Who decided the events recorded with the fast path on: the database or the engine."""

    batch: bool = False  # counting a batch step (record_many), else single events (record_one)
    fast: int = 0
    engine: int = 0
    batch_fast: int = 0
    batch_engine: int = 0
    topups: Counter[int] = field(default_factory=Counter)  # organization -> auto top-ups asked for
    left: Counter[int] = field(default_factory=Counter)  # status of the single events left to the engine


class _Undo(Exception):
    """Raised to roll an example back: each example leaves the database as it found it."""


def differential(monkeypatch, step_lists: st.SearchStrategy, examples: list[dict[str, Any]]) -> Tally:
    """Run generated worlds and steps on twin organizations, the fast path on for one and off for
    the other, comparing answers and rows after every step (see the module's docstring)."""
    tally = Tally()
    record_one, record_many = fast.record_one, fast.record_many

    def counted_one(**kwargs: Any) -> fast.Answer | None:
        answer = record_one(**kwargs)
        if not tally.batch:
            tally.fast += answer is not None
            tally.engine += answer is None
        return answer

    def counted_many(**kwargs: Any) -> fast.Batch:
        batch = record_many(**kwargs)
        if tally.batch:
            tally.batch_fast += sum(answer is not None for answer in batch.answers)
            tally.batch_engine += sum(answer is None for answer in batch.answers)
        return batch

    monkeypatch.setattr(fast, "record_one", counted_one)
    monkeypatch.setattr(fast, "record_many", counted_many)
    for module in (record_module, engine_module):
        monkeypatch.setattr(module, "auto_topup_enqueue_on_commit", lambda org_id: tally.topups.update([org_id]))

    @hypothesis_settings(
        max_examples=int(os.environ.get("RECORD_FAST_EXAMPLES", "80")),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(world=worlds, steps=step_lists)
    def each(world: WorldSpec, steps: list[tuple[Any, ...]]) -> None:
        try:
            with transaction.atomic():
                run(world, steps)
                raise _Undo
        except _Undo:
            pass

    def run(world: WorldSpec, steps: list[tuple[Any, ...]]) -> None:
        # Given the same world for two organizations
        built = build(world)
        a, b = built.fast_org, built.engine_org
        assert org_state(a) == org_state(b)
        clock = T0
        sent: list[UsageInput] = []  # each key's first request, to replay or reuse

        def new(key: str, quantity: Decimal, extra: str = "") -> UsageInput:
            return UsageInput(
                organization_id=0,
                meter=built.meter_key,
                quantity=quantity,
                idempotency_key=key,
                metadata={"job": key} if extra == "metadata" else {},
                occurred_at=clock - timedelta(minutes=1) if extra == "occurred_at" else None,
            )

        for number, step in enumerate(steps):
            what = step[0]
            uses: list[UsageInput] = []
            if what == "use" or (not sent and what in ("replay", "reuse")):
                uses = [new(f"k{number}", step[1] if what != "replay" else D(1), step[2] if what == "use" else "")]
            elif what == "replay":  # the same key with the same body
                uses = [sent[step[1] % len(sent)]]
            elif what == "reuse":  # the same key with another quantity
                uses = [another(sent[step[1] % len(sent)], step[2])]
            elif what == "batch":  # new keys, and keys used before (in this batch too), same body or not
                for n, choice in enumerate(step[1]):
                    if choice[0] == "new" or not (sent or uses):
                        uses.append(new(f"k{number}.{n}", choice[-1]))
                    else:
                        earlier = (sent + uses)[choice[1] % len(sent + uses)]
                        uses.append(earlier if choice[2] else another(earlier, choice[3]))
            elif what == "advance":
                clock = max(clock + timedelta(microseconds=1), next_time(a, clock, step[1]))
            else:
                grant(a, step[1], now=clock)
                grant(b, step[1], now=clock)

            # When the step runs on both, with the fast path on for one and off for the other
            if uses:
                sent.extend(use for use in uses if use.idempotency_key not in {u.idempotency_key for u in sent})
                outcomes = {}
                for org_id, fast_path in ((a, True), (b, False)):
                    mine = [replace(use, organization_id=org_id) for use in uses]
                    with override_settings(USAGE_FAST_PATH=fast_path):
                        tally.batch = what == "batch"
                        if what == "batch":
                            outcomes[org_id] = usage_record_batch(items=mine, now=clock)
                        else:
                            before = tally.engine
                            outcomes[org_id] = [usage_record(item=mine[0], now=clock)]
                            if fast_path and tally.engine > before:
                                tally.left[outcomes[org_id][0].status] += 1
                        tally.batch = False
                # Then the answers are the same
                assert [normal_outcome(o, a) for o in outcomes[a]] == [normal_outcome(o, b) for o in outcomes[b]], (
                    number,
                    step,
                )

            # and so is every row, and the auto top-ups asked for
            assert org_state(a) == org_state(b), (number, step)
            assert tally.topups[a] == tally.topups[b], (number, step)
        assert_ledger_consistent(a)
        assert_ledger_consistent(b)

    for case in examples:
        each = example(**case)(each)
    each()
    print(f"\n{tally}")
    return tally


def test_usage_record_answers_and_writes_the_same_with_the_fast_path_as_without(monkeypatch):
    tally = differential(
        monkeypatch,
        steps,
        examples=[
            {  # a replay is the first event of a new month
                "world": WorldSpec(D(5), (AllowanceSpec(FIVE_HOURS, D(3), False),), (), None, None),
                "steps": [("use", D(1), ""), ("advance", "month"), ("replay", 0)],
            },
            {  # the draw order: promotional before paid, then the older, across three lots
                "world": WorldSpec(
                    D(5),
                    (),
                    (
                        GrantSpec(D(20), "paid", 100, None, None),
                        GrantSpec(D(5), "promotional", 100, None, None),
                        GrantSpec(D(20), "promotional", 100, None, None),
                    ),
                    None,
                    None,
                ),
                "steps": [("use", D(7), "")],
            },
            {  # 150 -> 90 credits crosses the low mark and the auto top-up minimum (100)
                "world": WorldSpec(D(5), (), (GRANT_150,), None, D(100)),
                "steps": [("use", D(12), ""), ("use", D(1), "")],
            },
        ],
    )
    # Over the whole run both sides did their share: the test cannot pass by always falling back.
    assert tally.fast >= 0.3 * (tally.fast + tally.engine), tally
    assert tally.engine >= 0.05 * (tally.fast + tally.engine), tally


def test_usage_record_batch_answers_and_writes_the_same_with_the_fast_path_as_without(monkeypatch):
    tally = differential(
        monkeypatch,
        steps_with_batches,
        examples=[
            {  # two events in one batch take the balance under the low mark (100), then further down
                "world": WorldSpec(D(5), (), (GRANT_150,), None, None),
                "steps": [("batch", [("new", D(12)), ("new", D("0.5"))])],
            },
            {  # the same, with auto top-up at 100, and the batch's second event left to the engine
                "world": WorldSpec(D(5), (), (GRANT_150,), None, D(100)),
                "steps": [("batch", [("new", D(12)), ("again", 0, False, D(1)), ("new", D(18))])],
            },
        ],
    )
    assert tally.batch_fast >= 0.2 * (tally.batch_fast + tally.batch_engine), tally
    assert tally.batch_engine >= 0.05 * (tally.batch_fast + tally.batch_engine), tally


# The function alone --------------------------------------------------------------------------------


def rolling_setup(*, limit: str = "10", seconds: int | None = FIVE_HOURS, cpu: str = "5", credits: str | None = None):
    """A meter with one allowance (rolling by default, the billing period with seconds=None), and two
    organizations on it (the second to run the engine on), each with `credits` if given."""
    meter = MeterFactory(credits_per_unit=D(cpu))
    allowance = AllowanceFactory(
        meter=meter,
        limit=D(limit),
        window_kind=WindowKind.ROLLING if seconds else WindowKind.PERIOD,
        window_seconds=seconds,
    )
    orgs = [make_org(plan=allowance.plan) for _ in range(2)]
    if credits is not None:
        for org in orgs:
            credits_grant(organization_id=org.pk, credits=D(credits), now=T0)
    catalogue_clear()
    return meter, allowance, orgs[0], orgs[1]


def by_function(org, meter, quantity, key: str, *, now: datetime = NOW, **extra) -> Outcome | None:
    """The function's answer (None: the engine's to decide), as usage_record returns it."""
    use = item(org, meter, quantity, key, **extra)
    answer = fast.record_one(item=use, digest=request_hash(use), catalog=catalogue(), now=now)
    return None if answer is None else Outcome(answer.status, json.loads(answer.body), answer.replayed)


def by_engine(org, meter, quantity, key: str, *, now: datetime = NOW, **extra) -> Outcome:
    return usage_record_batch(items=[item(org, meter, quantity, key, **extra)], now=now)[0]


def everything(org) -> dict[str, object]:
    return org_state(org.pk)


def test_an_allowed_use_is_answered_and_written_as_the_engine_does():
    # Given two organizations with 10 included units per 5 hours, 5 credits a unit and 100 credits
    meter, allowance, org, twin = rolling_setup(credits="100")

    # When 12 units are recorded by the function for one and by the engine for the other
    out = by_function(org, meter, 12, "k1")
    expected = by_engine(twin, meter, 12, "k1")

    # Then the function answered (10 included, 2 x 5 credits drawn) exactly as the engine did
    assert out is not None
    assert (out.status, out.replayed) == (201, False)
    assert out.body == {
        "id": UsageEvent.objects.get(organization=org).pk,
        "decision": "allowed",
        "organization": org.pk,
        "meter": meter.key,
        "quantity": "12",
        "from_allowance": "10",
        "credits_charged": "10",
        "windows": [
            {
                "allowance": allowance.pk,
                "window": "5 hours",
                "kind": "rolling",
                "limit": "10",
                "used": "10",
                "remaining": "0",
                "starts_at": "2026-01-15T12:00:01+00:00",
                "resets_at": "2026-01-15T17:00:01+00:00",
            }
        ],
        "lots": [{"lot": CreditLot.objects.get(organization=org).pk, "credits": "10"}],
        "credits": {"balance": "90"},
        "plan": allowance.plan.key,
    }
    assert normal_outcome(out, org.pk) == normal_outcome(expected, twin.pk)
    # and wrote the same rows
    assert everything(org) == everything(twin)
    assert_ledger_consistent(org.pk)


def _leaves_it_to_the_engine(org, meter, quantity, key: str, *, now: datetime = NOW) -> None:
    before = everything(org)
    assert by_function(org, meter, quantity, key, now=now) is None
    assert everything(org) == before


def test_a_denial_is_left_to_the_engine_with_nothing_written():
    # Given 3 included units and no credits, 2 of them used
    meter, _, org, _ = rolling_setup(limit="3")
    assert by_function(org, meter, 2, "k1") is not None

    # When 2 more are asked for (the engine words a denial for role and language)
    # Then the function returns None and writes nothing
    _leaves_it_to_the_engine(org, meter, 2, "k2")

    # and the engine denies it
    assert usage_record(item=item(org, meter, 2, "k2"), now=NOW).status == 402


def test_a_denial_for_a_plan_that_blocks_credits_or_a_spend_cap_is_left_to_the_engine():
    # Given a plan that blocks credits past 1 included unit, and another org with a spend cap of 5
    meter = MeterFactory(credits_per_unit=D(5))
    blocking = AllowanceFactory(
        meter=meter, limit=D(1), window_kind=WindowKind.ROLLING, window_seconds=3600, overage=Overage.BLOCK
    )
    blocked = make_org(plan=blocking.plan)
    capped_allowance = AllowanceFactory(meter=meter, limit=D(0), window_kind=WindowKind.ROLLING, window_seconds=3600)
    capped = make_org(plan=capped_allowance.plan)
    for org in (blocked, capped):
        credits_grant(organization_id=org.pk, credits=D(100), now=T0)
    spend_cap_set(organization_id=capped.pk, cap=D(5), now=T0)
    catalogue_clear()

    # When each asks for more than it may have (2 units: 10 credits)
    # Then the function leaves both to the engine, having written nothing
    _leaves_it_to_the_engine(blocked, meter, 2, "k1")
    _leaves_it_to_the_engine(capped, meter, 2, "k1")
    # and what fits is still answered by the function
    assert by_function(blocked, meter, 1, "k2") is not None
    assert by_function(capped, meter, 1, "k2") is not None


def test_a_key_reused_with_another_body_is_left_to_the_engine():
    # Given a use recorded under key k1
    meter, _, org, _ = rolling_setup()
    assert by_function(org, meter, 2, "k1") is not None

    # When k1 comes again with another quantity
    # Then the function returns None with nothing written, and the engine refuses it (422)
    _leaves_it_to_the_engine(org, meter, 3, "k1")
    assert usage_record(item=item(org, meter, 3, "k1"), now=NOW).status == 422


def test_a_period_window_not_yet_opened_is_left_to_the_engine_then_the_function_takes_over():
    # Given an allowance per billing period that nothing has used yet
    meter, _, org, _ = rolling_setup(seconds=None)

    # When a use comes
    # Then the function leaves it to the engine (period arithmetic lives in plans/periods.py)
    _leaves_it_to_the_engine(org, meter, 2, "k1")
    assert usage_record(item=item(org, meter, 2, "k1"), now=NOW).status == 201

    # and once the engine has opened the window, the function answers the next use in it
    out = by_function(org, meter, 3, "k2", now=NOW + H)
    assert out is not None
    assert out.status == 201
    assert out.body["windows"][0]["used"] == "5"


def test_a_due_lot_expiry_is_left_to_the_engine():
    # Given 50 credits that expire in an hour, and no allowance
    meter, _, org, _ = rolling_setup(limit="0")
    credits_grant(organization_id=org.pk, credits=D(50), expires_at=T0 + H, now=T0)
    assert by_function(org, meter, 1, "k1") is not None  # before the expiry the function draws them
    account = CreditAccount.objects.get(organization=org)
    assert account.next_lot_expiry == T0 + H

    # When a use comes at the moment they expire (account.next_lot_expiry <= now)
    # Then the function leaves it to the engine, which expires the lot (and then denies)
    _leaves_it_to_the_engine(org, meter, 1, "k2", now=T0 + H)
    assert usage_record(item=item(org, meter, 1, "k2"), now=T0 + H).status == 402
    assert list(LedgerEntry.objects.filter(organization=org, kind="expire").values_list("amount", flat=True)) == [
        D(-45)
    ]


def test_a_due_hold_expiry_is_left_to_the_engine():
    # Given an organization whose account says a reservation's hold is due
    meter, _, org, _ = rolling_setup()
    CreditAccount.objects.filter(organization=org).update(next_hold_expiry=NOW)

    # When a use comes
    # Then the function leaves it to the engine (which releases expired holds first)
    _leaves_it_to_the_engine(org, meter, 1, "k1")


def test_an_unknown_organization_or_meter_is_left_to_the_engine():
    # Given a meter and an organization id that does not exist
    meter, _, org, _ = rolling_setup()
    missing = org.pk + 1000

    # When a use comes for it, or for a meter that does not exist
    # Then the function returns None, and the engine answers 404 and 400
    assert by_function(missing, meter, 1, "k1") is None
    assert usage_record(item=item(missing, meter, 1, "k1"), now=NOW).status == 404
    _leaves_it_to_the_engine(org, "no.such.meter", 1, "k1")
    assert usage_record(item=item(org, "no.such.meter", 1, "k1"), now=NOW).status == 400


def test_a_replay_returns_the_stored_answer_allowed_or_denied():
    # Given an allowed use recorded by the function and a denied one recorded by the engine
    meter, _, org, _ = rolling_setup(limit="3")
    first = by_function(org, meter, 2, "k1")
    assert first is not None
    denied = usage_record(item=item(org, meter, 5, "k2"), now=NOW)
    assert denied.status == 402
    before = everything(org)

    # When both keys come again with the same bodies, later
    again = by_function(org, meter, 2, "k1", now=NOW + H)
    denied_again = by_function(org, meter, 5, "k2", now=NOW + H)

    # Then each gets its stored status and body (with the event's id), marked replayed, nothing written
    assert again is not None and denied_again is not None
    assert (again.status, again.body, again.replayed) == (201, first.body, True)
    assert (denied_again.status, denied_again.body, denied_again.replayed) == (402, denied.body, True)
    assert everything(org) == before


def test_threshold_notices_are_written_as_the_engine_writes_them():
    # Given 10 included units per 5 hours
    meter, allowance, org, twin = rolling_setup()

    # When 5, 3 and 2 units are used (50 %, 80 %, then 100 %), by the function and by the engine
    for quantity, key in ((5, "k1"), (3, "k2"), (2, "k3")):
        assert by_function(org, meter, quantity, key) is not None
        by_engine(twin, meter, quantity, key)

    # Then there is one notice per threshold, the same as the engine's
    start = "2026-01-15T12:00:01+00:00"
    notices = list(Notice.objects.filter(organization=org).order_by("id").values_list("kind", "dedupe_key", "payload"))
    assert notices == [
        (
            "window_threshold",
            f"{allowance.pk}:{start}:{pct}",
            {
                "percent": pct,
                "meter_id": meter.pk,
                "window": "5 hours",
                "window_kind": "rolling",
                "window_seconds": FIVE_HOURS,
                "limit": "10",
                "resets_at": "2026-01-15T17:00:01+00:00",
            },
        )
        for pct in (50, 80, 100)
    ]
    assert everything(org) == everything(twin)


def test_credits_low_then_depleted_notices_are_written_as_the_engine_writes_them():
    # Given no allowance, 5 credits a unit and 150 credits (the low mark is 100)
    meter, _, org, twin = rolling_setup(limit="0", credits="150")

    # When 12 units (60 credits: 90 left) then 18 (90 credits: none left) are used
    for quantity, key in ((12, "k1"), (18, "k2")):
        assert by_function(org, meter, quantity, key) is not None
        by_engine(twin, meter, quantity, key)

    # Then credits_low, then credits_depleted were noted, as by the engine
    day = NOW.date().isoformat()
    notices = Notice.objects.filter(organization=org).order_by("id")
    assert list(notices.values_list("kind", "dedupe_key", "payload")) == [
        ("credits_low", day, {"balance": "90", "threshold": "100"}),
        ("credits_depleted", day, {"balance": "0"}),
    ]
    assert everything(org) == everything(twin)


def test_auto_top_up_is_asked_for_when_the_balance_crosses_the_minimum(monkeypatch):
    # Given 150 credits, 5 credits a unit, and auto top-up on with a minimum of 50 (and a twin)
    meter, _, org, twin = rolling_setup(limit="0", credits="150")
    for o in (org, twin):
        CreditAccount.objects.filter(organization=o).update(
            auto_topup_enabled=True, auto_topup_min_balance=D(50), auto_topup_target_balance=D(200)
        )
    asked: list[int] = []
    monkeypatch.setattr(record_module, "auto_topup_enqueue_on_commit", asked.append)
    monkeypatch.setattr(engine_module, "auto_topup_enqueue_on_commit", asked.append)
    answered: list[bool] = []
    record_one = fast.record_one

    def watched(**kwargs: Any) -> fast.Answer | None:
        answer = record_one(**kwargs)
        answered.append(answer is not None)
        return answer

    monkeypatch.setattr(fast, "record_one", watched)

    # When the balance goes 150 -> 90 (above the minimum), 90 -> 40 (crossing it), then 40 -> 35
    # Then a top-up is asked for once, when it crosses, by the function as by the engine
    for quantity, key, expected in ((12, "k1", []), (10, "k2", [org.pk]), (1, "k3", [org.pk])):
        with override_settings(USAGE_FAST_PATH=True):
            assert usage_record(item=item(org, meter, quantity, key), now=NOW).status == 201
        assert asked == expected
    assert answered == [True, True, True]  # all three by the function
    asked.clear()
    for quantity, key in ((12, "k1"), (10, "k2"), (1, "k3")):
        by_engine(twin, meter, quantity, key)
    assert asked == [twin.pk]
    assert everything(org) == everything(twin)


def test_windows_are_named_in_the_request_language_and_notices_in_the_site_language():
    # Given 2 included units per 5 hours, and 100 credits
    meter, _, org, twin = rolling_setup(limit="2", credits="100")

    # When a request in Japanese uses both, through the function and through the engine
    with translation.override("ja"):
        out = by_function(org, meter, 2, "k1")
        expected = by_engine(twin, meter, 2, "k1")

    # Then the answer names the window in Japanese, as the engine's does
    assert out is not None
    assert out.body["windows"][0]["window"] == "5時間"
    assert normal_outcome(out, org.pk) == normal_outcome(expected, twin.pk)
    # and the notices (for the admin and the email sender) keep the site's language
    notices = Notice.objects.filter(organization=org, kind="window_threshold")
    windows = set(notices.values_list("payload__window", flat=True))
    assert windows == {"5 hours"}
    assert everything(org) == everything(twin)
    # and a request in English after it is named in English (the catalogue's cache is per language)
    again = by_function(org, meter, 0.5, "k2")
    assert again is not None
    assert again.body["windows"][0]["window"] == "5 hours"


def test_the_database_writes_the_answer_as_the_api_writes_the_engines(settings):
    # Given 2 included units per 5 hours and 100 credits, twice, and a request in Japanese (a label
    # that is not ASCII) that uses the window up and draws credits: through each function, and by the engine
    meter, _, org, twin = rolling_setup(limit="2", credits="100")
    with translation.override("ja"):
        one = fast.record_one(item=item(org, meter, 3, "k1"), digest="h", catalog=catalogue(), now=NOW)
        many = fast.record_many(items=[item(org, meter, 1, "k2")], digests=["h"], catalog=catalogue(), now=NOW)
        settings.USAGE_FAST_PATH = False
        expected = usage_record_batch(items=[item(twin, meter, 3, "k1"), item(twin, meter, 1, "k2")], now=NOW)
    assert one is not None and many.answers[0] is not None
    raws = [one.body, many.answers[0].body]

    # Then each answer is the text the API writes for the engine's: compact, UTF-8, the engine's key order
    for raw, engine in zip(raws, expected, strict=True):
        assert raw == api_text(json.loads(raw))
        assert '"window":"5時間"' in raw
        assert api_text(Ids.of(org.pk).body(json.loads(raw))) == api_text(Ids.of(twin.pk).body(engine.body))


def test_a_caller_that_sends_the_catalogue_without_its_encoded_strings_gets_the_same_answers(monkeypatch):
    # Given twin organizations, and a caller whose catalogue JSON lacks "kj" and "head" (the Python of
    # v1, still running while a deploy installs v2)
    meter, _, org, twin = rolling_setup(limit="2", credits="100")
    plans, meter_json = fast._plans_for_meter, fast._meter_json

    def without_encoded(text: str) -> str:
        def strip(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items() if k not in ("kj", "head")}
            return value

        return json.dumps(strip(json.loads(text)))

    # When each records the same uses, once through each function
    def record(organization, *, old: bool) -> list[str]:
        if old:
            monkeypatch.setattr(fast, "_plans_for_meter", lambda c, m: without_encoded(plans(c, m)))
            monkeypatch.setattr(fast, "_meter_json", lambda c, m: without_encoded(meter_json(c, m)))
        catalogue_clear()
        with translation.override("ja"):
            one = fast.record_one(item=item(organization, meter, 3, "k1"), digest="h", catalog=catalogue(), now=NOW)
            many = fast.record_many(
                items=[item(organization, meter, 1, "k2")], digests=["h"], catalog=catalogue(), now=NOW
            )
        monkeypatch.undo()
        assert one is not None and many.answers[0] is not None
        return [one.body, many.answers[0].body]

    new, old = record(org, old=False), record(twin, old=True)

    # Then the answers are the same, written the same way, key for key and in the same order
    for raw_new, raw_old in zip(new, old, strict=True):
        assert raw_old == api_text(json.loads(raw_old))
        assert api_text(Ids.of(org.pk).body(json.loads(raw_new))) == api_text(Ids.of(twin.pk).body(json.loads(raw_old)))
    assert everything(org) == everything(twin)


def test_a_batch_past_sixteen_events_of_one_organization_is_finished_by_the_engine_as_the_engine_would(settings):
    # Given twin organizations with 10 included a window and 100 credits (5 a unit)
    meter, _, fast_org, engine_org = rolling_setup(limit="10", credits="100")
    batch = [("1", f"k{i}") for i in range(20)] + [("1", "k3")]  # 20 events, then a replay of the 4th

    # When one batch of 21 events for one organization goes through each path
    fast_outcomes = usage_record_batch(items=[item(fast_org, meter, q, k) for q, k in batch], now=NOW)
    by_database = [o.raw is not None for o in fast_outcomes]  # before `body` is read (it parses `raw`)
    settings.USAGE_FAST_PATH = False
    engine_outcomes = usage_record_batch(items=[item(engine_org, meter, q, k) for q, k in batch], now=NOW)

    # Then the answers and the rows are the same: the function decides the first 16, the engine the rest
    assert [normal_outcome(o, fast_org.pk) for o in fast_outcomes] == [
        normal_outcome(o, engine_org.pk) for o in engine_outcomes
    ]
    assert by_database == [True] * 16 + [False] * 5
    assert everything(fast_org) == everything(engine_org)
    assert [o.body.get("credits_charged") for o in fast_outcomes[9:12]] == ["0", "5", "5"]


def _functions_in_file() -> dict[str, str]:
    text = (Path(settings_module.BASE_DIR) / "usage" / "sql" / "record_fast_v2.sql").read_text()
    return dict(re.findall(r"CREATE OR REPLACE FUNCTION (\w+)\(.*?AS \$\$(.*?)\$\$;", text, re.S))


def test_the_database_holds_the_functions_the_sql_file_defines():
    # Given the functions the SQL file defines (a migration installs it; a change needs a new one)
    defined = _functions_in_file()
    assert set(defined) == {"flex_iso", "usage_record_fast", "usage_record_fast_batch"}

    # When the database is asked for their source
    with connection.cursor() as cursor:
        cursor.execute("SELECT proname, prosrc FROM pg_proc WHERE proname = ANY(%s)", [list(defined)])
        installed = dict(cursor.fetchall())

    # Then it holds exactly that source
    assert installed == defined


def test_a_batch_over_several_organizations_is_answered_and_written_as_the_engine_does(settings):
    # Given two pairs of twin organizations: one with 3 included a rolling window and 30 credits (5 a
    # unit); one whose billing-period window is not open yet (the engine opens it) with 12 credits
    meter_a, _, fast_a, engine_a = rolling_setup(limit="3", credits="30")
    meter_b, _, fast_b, engine_b = rolling_setup(limit="2", seconds=None, credits="12")
    steps = [  # (pair, quantity, key): both organizations' events interleaved, repeats and a replay
        ("a", "2", "a1"),
        ("b", "1", "b1"),
        ("a", "2", "a2"),
        ("b", "2", "b2"),
        ("a", "1", "a3"),
        ("b", "3", "b3"),  # more than the credits left: denied by the engine
        ("a", "2", "a1"),  # a replay within the batch
        ("a", "9", "a4"),  # more than the credits left
        ("b", "1", "b4"),
    ]

    def batch(orgs: dict[str, Any]) -> list[Outcome]:
        meters = {"a": meter_a, "b": meter_b}
        return usage_record_batch(items=[item(orgs[p], meters[p], q, k) for p, q, k in steps], now=NOW)

    # When the same batch goes through each path
    fast_outcomes = batch({"a": fast_a, "b": fast_b})
    by_database = [o.raw is not None for o in fast_outcomes]
    settings.USAGE_FAST_PATH = False
    engine_outcomes = batch({"a": engine_a, "b": engine_b})

    # Then every answer and every row is the same, and both deciders took part
    pairs = {"a": (fast_a, engine_a), "b": (fast_b, engine_b)}
    for (pair, _, _), fast_outcome, engine_outcome in zip(steps, fast_outcomes, engine_outcomes, strict=True):
        fast_org, engine_org = pairs[pair]
        assert normal_outcome(fast_outcome, fast_org.pk) == normal_outcome(engine_outcome, engine_org.pk)
    assert everything(fast_a) == everything(engine_a)
    assert everything(fast_b) == everything(engine_b)
    assert by_database == [True, False, True, False, True, False, True, False, False]
    assert [o.status for o in fast_outcomes] == [201, 201, 201, 201, 201, 402, 201, 402, 201]
