"""The decision waterfall through the services (not HTTP): idempotency, allowance, credits, deny."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from accounts.models import User
from billing.models import CreditAccount
from billing.services import credits_grant, spend_cap_set
from plans.models import Overage, WindowKind
from tests.factories import T0, AllowanceFactory, MeterFactory, PlanFactory, make_org
from tests.usage.engine_support import D, assert_books_balance, balance, entries, events, item, snapshot, use, windows
from usage.models import UsageEvent
from usage.services import record, usage_authorize, usage_record_batch

pytestmark = pytest.mark.django_db

H = timedelta(hours=1)
FIVE_HOURS = 5 * 3600
SEVEN_DAYS = 7 * 86400


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def period_setup(*, limit="10", cpu="5", price=2000, anchor=T0, timezone="UTC", overage=Overage.CREDITS):
    meter = MeterFactory(credits_per_unit=D(cpu))
    allowance = AllowanceFactory(plan=PlanFactory(price_amount=price), meter=meter, limit=D(limit), overage=overage)
    org = make_org(plan=allowance.plan, anchor=anchor, timezone=timezone)
    return org, meter, allowance


def five_hours_and_seven_days(*, short="5", long="20", cpu="5"):
    meter = MeterFactory(credits_per_unit=D(cpu))
    plan = PlanFactory()
    five = AllowanceFactory(
        plan=plan, meter=meter, limit=D(short), window_kind=WindowKind.ROLLING, window_seconds=FIVE_HOURS
    )
    seven = AllowanceFactory(
        plan=plan, meter=meter, limit=D(long), window_kind=WindowKind.ROLLING, window_seconds=SEVEN_DAYS
    )
    org = make_org(plan=plan)
    return org, meter, five, seven


def grant(org, credits, *, now=T0, **kwargs):
    return credits_grant(organization_id=org.pk, credits=D(credits), now=now, **kwargs)


# Allowance first, then credits -----------------------------------------------------------------


def test_allowance_is_used_first_with_the_full_decision_breakdown():
    # Given a plan with 10 included per billing period and 100 credits
    org, meter, allowance = period_setup()
    grant(org, "100")
    # When 4 are recorded
    out = use(org, meter, "4", "k1", now=T0 + H)
    # Then all 4 come from the allowance and no credit is drawn
    event = UsageEvent.objects.get(organization=org, idempotency_key="k1")
    assert out.status == 201
    assert out.replayed is False
    assert out.body == {
        "id": event.pk,
        "decision": "allowed",
        "organization": org.pk,
        "meter": meter.key,
        "quantity": "4",
        "from_allowance": "4",
        "credits_charged": "0",
        "windows": [
            {
                "allowance": allowance.pk,
                "window": "billing period",
                "kind": "period",
                "limit": "10",
                "used": "4",
                "remaining": "6",
                "starts_at": "2026-01-15T12:00:00+00:00",
                "resets_at": "2026-02-15T12:00:00+00:00",
            }
        ],
        "lots": [],
        "credits": {"balance": "100"},
        "plan": allowance.plan.key,
    }
    assert windows(org) == [(allowance.pk, T0, utc(2026, 2, 15, 12), D(10), D(4))]
    assert (event.decision, event.http_status, event.from_allowance, event.credits_charged) == (
        "allowed",
        201,
        D(4),
        D(0),
    )
    assert balance(org) == D(100)


def test_the_rest_costs_quantity_times_credits_per_unit():
    # Given 6 left of the allowance and 100 credits at 5 credits per unit
    org, meter, allowance = period_setup()
    lot = grant(org, "100")
    use(org, meter, "4", "k1", now=T0 + H)
    # When 8 more are recorded
    out = use(org, meter, "8", "k2", now=T0 + 2 * H)
    # Then 6 are included and 2 x 5 = 10 credits are drawn, one ledger entry naming the event
    assert out.status == 201
    assert (out.body["from_allowance"], out.body["credits_charged"]) == ("6", "10")
    assert out.body["lots"] == [{"lot": lot.pk, "credits": "10"}]
    assert out.body["credits"] == {"balance": "90"}
    assert out.body["windows"][0]["remaining"] == "0"
    assert windows(org) == [(allowance.pk, T0, utc(2026, 2, 15, 12), D(10), D(10))]
    assert entries(org, kind="consume") == [("consume", lot.pk, D(-10), D(90), f"usage:{out.body['id']}")]
    assert assert_books_balance(org) == D(90)


def test_credit_cost_is_rounded_half_up_to_four_places():
    # Given no allowance left and a meter at 0.0003 credits per unit
    org, meter, _ = period_setup(limit="0", cpu="0.0003")
    grant(org, "1")
    # When 0.5 is recorded (0.00015 credits)
    out = use(org, meter, "0.5", "k1", now=T0)
    # Then 0.0002 is charged
    assert out.body["credits_charged"] == "0.0002"
    assert assert_books_balance(org) == D("0.9998")


def test_decimal_quantities_are_exact():
    org, meter, allowance = period_setup(limit="1", cpu="2.5")
    grant(org, "10")
    out = use(org, meter, "1.3333", "k1", now=T0)
    # 1 included, 0.3333 x 2.5 = 0.83325 -> 0.8333
    assert (out.body["from_allowance"], out.body["credits_charged"]) == ("1", "0.8333")
    assert assert_books_balance(org) == D("9.1667")


# Windows ---------------------------------------------------------------------------------------


def test_included_part_is_the_smallest_room_and_counts_against_every_window():
    # Given 5 per 5 hours and 20 per 7 days, and credits
    org, meter, five, seven = five_hours_and_seven_days()
    grant(org, "100")
    # When 3 then 4 are recorded
    first = use(org, meter, "3", "k1", now=T0)
    second = use(org, meter, "4", "k2", now=T0 + H)
    # Then the second takes min(2, 17) = 2 from the allowance, from both windows, and 2 x 5 credits
    assert (first.body["from_allowance"], first.body["credits_charged"]) == ("3", "0")
    assert (second.body["from_allowance"], second.body["credits_charged"]) == ("2", "10")
    assert [(w["window"], w["used"], w["remaining"]) for w in second.body["windows"]] == [
        ("5 hours", "5", "0"),
        ("7 days", "5", "15"),
    ]
    assert windows(org) == [
        (five.pk, T0, T0 + 5 * H, D(5), D(5)),
        (seven.pk, T0, T0 + timedelta(days=7), D(20), D(5)),
    ]
    assert balance(org) == D(90)


def test_rolling_window_starts_at_first_use_and_the_next_at_first_use_after_it_ended():
    # Given a 5-hour rolling window of 5
    meter = MeterFactory()
    allowance = AllowanceFactory(meter=meter, limit=D(5), window_kind=WindowKind.ROLLING, window_seconds=FIVE_HOURS)
    org = make_org(plan=allowance.plan)
    # Before any use the window has no start
    before = usage_authorize(organization_id=org.pk, meter=meter.key, quantity=D(1), now=T0)
    assert (before.body["windows"][0]["starts_at"], before.body["windows"][0]["resets_at"]) == (None, None)
    # When first used 3 hours after the anchor
    first = T0 + 3 * H
    use(org, meter, "2", "k1", now=first)
    # Then the window runs from that first use
    assert windows(org) == [(allowance.pk, first, first + 5 * H, D(5), D(2))]
    # Still inside it, one microsecond before the end
    inside = use(org, meter, "3", "k2", now=first + 5 * H - timedelta(microseconds=1))
    assert inside.status == 201
    assert inside.body["windows"][0]["resets_at"] == (first + 5 * H).isoformat()
    # When the next use comes 2 hours after the window ended
    later = first + 7 * H
    out = use(org, meter, "1", "k3", now=later)
    # Then a new window starts at that use (7 hours after the first), not at the old end
    assert out.status == 201
    assert out.body["windows"][0]["starts_at"] == later.isoformat()
    assert windows(org) == [
        (allowance.pk, first, first + 5 * H, D(5), D(5)),
        (allowance.pk, later, later + 5 * H, D(5), D(1)),
    ]


def test_a_request_that_read_the_clock_earlier_uses_the_rolling_window_a_later_one_opened():
    # Given a 5-hour rolling window of 3, opened and used up by a request stamped 2 s after T0
    meter = MeterFactory()
    allowance = AllowanceFactory(meter=meter, limit=D(3), window_kind=WindowKind.ROLLING, window_seconds=FIVE_HOURS)
    org = make_org(plan=allowance.plan)
    later = T0 + timedelta(seconds=2)
    assert use(org, meter, "3", "k1", now=later).status == 201
    # When a request that read the clock 1 s earlier gets the lock afterwards
    out = use(org, meter, "1", "k2", now=T0 + timedelta(seconds=1))
    # Then it counts against that window (used up: no credits, so denied) instead of opening another
    assert (out.status, out.body["error"]["code"]) == (402, "limit_reached")
    assert out.body["windows"][0]["resets_at"] == (later + 5 * H).isoformat()
    assert windows(org) == [(allowance.pk, later, later + 5 * H, D(3), D(3))]


def test_rolling_window_ends_exactly_at_its_length():
    meter = MeterFactory()
    allowance = AllowanceFactory(meter=meter, limit=D(5), window_kind=WindowKind.ROLLING, window_seconds=FIVE_HOURS)
    org = make_org(plan=allowance.plan)
    use(org, meter, "5", "k1", now=T0)
    # At the end instant the old window no longer applies: a new one opens
    out = use(org, meter, "5", "k2", now=T0 + 5 * H)
    assert out.status == 201
    assert windows(org) == [
        (allowance.pk, T0, T0 + 5 * H, D(5), D(5)),
        (allowance.pk, T0 + 5 * H, T0 + 10 * H, D(5), D(5)),
    ]


def test_period_window_follows_the_subscription_anchor_and_resets_at_the_month_boundary():
    # Given an anchor on Jan 31 10:00 and 10 per month, without credits
    anchor = utc(2026, 1, 31, 10)
    org, meter, allowance = period_setup(anchor=anchor)
    assert use(org, meter, "10", "k1", now=utc(2026, 2, 10)).status == 201
    # When one more is asked for a microsecond before Feb 28 10:00
    denied = use(org, meter, "1", "k2", now=utc(2026, 2, 28, 10) - timedelta(microseconds=1))
    # Then it is denied until the period ends
    assert denied.status == 402
    assert denied.body["error"]["resets_at"] == "2026-02-28T10:00:00+00:00"
    # And at Feb 28 10:00 a new window (to Mar 31 10:00) has the whole allowance
    allowed = use(org, meter, "10", "k3", now=utc(2026, 2, 28, 10))
    assert allowed.status == 201
    assert windows(org) == [
        (allowance.pk, anchor, utc(2026, 2, 28, 10), D(10), D(10)),
        (allowance.pk, utc(2026, 2, 28, 10), utc(2026, 3, 31, 10), D(10), D(10)),
    ]


def test_period_window_in_the_organizations_time_zone_stays_at_local_midnight():
    # Given a New York organization anchored at local midnight on Mar 1 2026 (EST, 05:00Z)
    org, meter, allowance = period_setup(anchor=utc(2026, 3, 1, 5), timezone="America/New_York")
    # When used in March (DST starts Mar 8)
    use(org, meter, "1", "k1", now=utc(2026, 3, 20))
    # Then the window ends at local midnight on Apr 1, EDT
    assert windows(org) == [(allowance.pk, utc(2026, 3, 1, 5), utc(2026, 4, 1, 4), D(10), D(1))]


def test_several_windows_per_meter_block_until_the_blocking_ones_reset():
    # Given 5 per 5 hours and 8 per 7 days, and no credits
    org, meter, five, seven = five_hours_and_seven_days(short="5", long="8")
    assert use(org, meter, "5", "k1", now=T0).status == 201
    # When one more is asked inside the 5 hours
    first = use(org, meter, "1", "k2", now=T0 + H)
    # Then it is denied until the 5-hour window resets
    assert first.status == 402
    assert first.body["error"]["resets_at"] == (T0 + 5 * H).isoformat()
    # When 5 are asked after the 5 hours: 5 of room in the new 5-hour window but only 3 in the 7 days
    second = use(org, meter, "5", "k3", now=T0 + 5 * H)
    # Then it is denied until the 7-day window resets, and the new 5-hour window is not written
    assert second.status == 402
    assert second.body["error"]["resets_at"] == (T0 + timedelta(days=7)).isoformat()
    assert [(w["window"], w["remaining"]) for w in second.body["windows"]] == [("5 hours", "5"), ("7 days", "3")]
    # And 3 fit
    third = use(org, meter, "3", "k4", now=T0 + 5 * H)
    assert third.status == 201
    assert windows(org) == [
        (five.pk, T0, T0 + 5 * H, D(5), D(5)),
        (five.pk, T0 + 5 * H, T0 + 10 * H, D(5), D(3)),
        (seven.pk, T0, T0 + timedelta(days=7), D(8), D(8)),
    ]


def test_meter_without_allowance_on_the_plan_is_paid_entirely_in_credits():
    org, _, _ = period_setup()
    other = MeterFactory(credits_per_unit=D(25))
    grant(org, "100")
    out = use(org, other, "2", "k1", now=T0)
    assert (out.status, out.body["from_allowance"], out.body["credits_charged"], out.body["windows"]) == (
        201,
        "0",
        "50",
        [],
    )
    assert assert_books_balance(org) == D(50)


# Blocking and denial ---------------------------------------------------------------------------


def test_overage_block_denies_instead_of_drawing_credits():
    # Given a plan that blocks credits for the meter, with 2 left and 100 credits
    org, meter, allowance = period_setup(limit="2", overage=Overage.BLOCK)
    grant(org, "100")
    before = snapshot(org)
    # When 3 are asked
    out = use(org, meter, "3", "k1", now=T0)
    # Then it is denied; the credits stay
    assert out.status == 402
    assert out.body["error"]["code"] == "limit_reached"
    assert snapshot(org) == before
    # And the 2 that fit are allowed without credits
    assert use(org, meter, "2", "k2", now=T0).body["credits_charged"] == "0"
    assert balance(org) == D(100)


def test_a_denial_consumes_nothing_and_is_stored():
    # Given 3 of the allowance left and 4 credits (1 more unit costs 5)
    org, meter, allowance = period_setup()
    grant(org, "4")
    use(org, meter, "7", "k1", now=T0)
    before = snapshot(org)
    # When 4 are asked (3 included + 5 credits)
    out = use(org, meter, "4", "k2", now=T0 + H)
    # Then nothing is consumed: windows, lots, ledger and account are unchanged
    assert out.status == 402
    assert snapshot(org) == before
    # The answer shows what stands, with nothing taken
    assert (out.body["decision"], out.body["from_allowance"], out.body["credits_charged"]) == ("denied", "0", "0")
    assert out.body["windows"][0]["remaining"] == "3"
    assert out.body["credits"] == {"balance": "4"}
    assert out.body["error"]["code"] == "limit_reached"
    assert out.body["error"]["purchase_url"] == f"http://127.0.0.1:8000/billing/credits/?organization={org.pk}"
    # And the decision is stored, with its body
    event = UsageEvent.objects.get(organization=org, idempotency_key="k2")
    assert (event.decision, event.http_status, event.quantity, event.from_allowance, event.credits_charged) == (
        "denied",
        402,
        D(4),
        D(0),
        D(0),
    )
    assert out.body["id"] == event.pk
    assert {"id": event.pk, **event.response} == out.body


# Idempotency -----------------------------------------------------------------------------------


def test_same_key_same_body_replays_the_same_status_and_body():
    org, meter, _ = period_setup(limit="2")
    grant(org, "100")
    first = use(org, meter, "3", "k1", now=T0)
    after_first = snapshot(org)
    # When the same call comes again, later
    again = use(org, meter, "3", "k1", now=T0 + H)
    # Then it is the same answer (same id) and nothing more is consumed
    assert (again.status, again.body) == (first.status, first.body)
    assert again.replayed is True
    assert snapshot(org) == after_first
    assert events(org) == [("k1", "allowed", 201, D(3), D(2), D(5))]


def test_same_key_other_body_is_refused_with_422():
    org, meter, _ = period_setup()
    use(org, meter, "3", "k1", now=T0)
    before = snapshot(org)
    for other in (
        item(org, meter, "4", "k1"),
        item(org, meter, "3", "k1", metadata={"job": "x"}),
        item(org, meter, "3", "k1", user_id=99),
    ):
        [out] = usage_record_batch(items=[other], now=T0)
        assert out.status == 422
        assert out.body["error"]["code"] == "idempotency_key_reused"
    assert snapshot(org) == before
    assert events(org) == [("k1", "allowed", 201, D(3), D(3), D(0))]


def test_same_key_on_another_meter_is_refused():
    org, meter, _ = period_setup()
    other = MeterFactory()
    use(org, meter, "1", "k1", now=T0)
    assert use(org, other, "1", "k1", now=T0).status == 422


def test_replay_of_a_denied_call_is_denied_the_same_way_after_credits_were_added():
    # Given a denied call
    org, meter, _ = period_setup(limit="0")
    denied = use(org, meter, "1", "k1", now=T0)
    assert denied.status == 402
    # When credits are added and the same call is replayed
    grant(org, "100", now=T0 + H)
    again = use(org, meter, "1", "k1", now=T0 + 2 * H)
    # Then it is denied with the same body (the stored one, showing the old balance)
    assert (again.status, again.body) == (402, denied.body)
    assert again.body["credits"] == {"balance": "0"}
    assert balance(org) == D(100)
    # And a new key is allowed
    assert use(org, meter, "1", "k2", now=T0 + 2 * H).status == 201


def test_the_same_key_in_two_organizations_is_two_events():
    org_a, meter, allowance = period_setup()
    org_b = make_org(plan=allowance.plan)
    assert use(org_a, meter, "1", "k1", now=T0).status == 201
    out = use(org_b, meter, "2", "k1", now=T0)
    assert (out.status, out.replayed, out.body["from_allowance"]) == (201, False, "2")


def test_a_months_spend_past_the_largest_stored_amount_saturates_instead_of_failing(require_postgres):
    # (PostgreSQL: SQLite keeps a decimal's first 15 significant digits, through a double, and these
    # amounts have 20. The embedded default is for trying the product, not for 10^15 credits.)
    # Given an organization that spends 6e15 credits twice in one month (each grant fits; the sum does not)
    org, meter, _ = period_setup(limit="0", cpu="5")
    grant(org, "6000000000000000")
    assert use(org, meter, "1200000000000000", "k1", now=T0).status == 201
    grant(org, "6000000000000000")
    # When it spends the second grant
    out = use(org, meter, "1200000000000000", "k2", now=T0)
    # Then the request is allowed, and the month's total holds the largest amount a column stores
    assert (out.status, out.body["credits"]["balance"]) == (201, "0")
    assert CreditAccount.objects.get(organization=org).spend_month_total == D("9999999999999999.9999")
    assert assert_books_balance(org) == D(0)


# Batch -----------------------------------------------------------------------------------------


def test_batch_decides_in_order_against_the_running_state():
    # Given 5 included and 10 credits (2 units)
    org, meter, allowance = period_setup(limit="5")
    grant(org, "10")
    # When a batch asks 4, 2, 1, 1
    outs = usage_record_batch(items=[item(org, meter, q, f"k{i}") for i, q in enumerate(["4", "2", "1", "1"])], now=T0)
    # Then 4 included; 1 included + 1 credited; 1 credited; the last denied
    assert [(o.status, o.body.get("from_allowance"), o.body.get("credits_charged")) for o in outs] == [
        (201, "4", "0"),
        (201, "1", "5"),
        (201, "0", "5"),
        (402, "0", "0"),
    ]
    assert [o.body["credits"]["balance"] for o in outs] == ["10", "5", "0", "0"]
    assert windows(org) == [(allowance.pk, T0, utc(2026, 2, 15, 12), D(5), D(5))]
    assert assert_books_balance(org) == D(0)
    assert [e[0:3] for e in events(org)] == [
        ("k0", "allowed", 201),
        ("k1", "allowed", 201),
        ("k2", "allowed", 201),
        ("k3", "denied", 402),
    ]


def test_batch_with_a_key_repeated_inside_the_batch_has_one_effect():
    org, meter, allowance = period_setup(limit="10")
    outs = usage_record_batch(
        items=[
            item(org, meter, "3", "a"),
            item(org, meter, "2", "b"),
            item(org, meter, "3", "a"),
            item(org, meter, "9", "b"),
        ],
        now=T0,
    )
    # The repeat of "a" replays the first answer, with its id; "b" with another body is refused
    assert [o.status for o in outs] == [201, 201, 201, 422]
    assert (outs[2].body, outs[2].replayed) == (outs[0].body, True)
    assert outs[3].body["error"]["code"] == "idempotency_key_reused"
    assert outs[0].body["id"] == UsageEvent.objects.get(organization=org, idempotency_key="a").pk
    assert windows(org) == [(allowance.pk, T0, utc(2026, 2, 15, 12), D(10), D(5))]
    assert [e[0] for e in events(org)] == ["a", "b"]
    # And a later single call with "a" replays it too
    assert use(org, meter, "3", "a", now=T0 + H).body == outs[0].body


def test_batch_mixes_organizations_unknown_meters_and_unknown_organizations():
    org_a, meter, allowance = period_setup()
    org_b = make_org(plan=allowance.plan)
    missing = org_b.pk + 1000
    outs = usage_record_batch(
        items=[
            item(org_a, meter, "1", "k"),
            item(missing, meter, "1", "k"),
            item(org_b, "no.such.meter", "1", "k"),
            item(org_b, meter, "2", "k"),
        ],
        now=T0,
    )
    assert [o.status for o in outs] == [201, 404, 400, 201]
    assert outs[1].body["error"]["code"] == "organization_not_found"
    assert outs[2].body["error"]["code"] == "meter_not_found"
    assert [w[4] for w in windows(org_a)] == [D(1)]
    assert [w[4] for w in windows(org_b)] == [D(2)]
    assert events(org_b) == [("k", "allowed", 201, D(2), D(2), D(0))]


def test_a_batch_over_many_organizations_commits_in_groups_and_answers_in_order(monkeypatch):
    # Given 5 organizations and groups of 2 organizations per transaction
    monkeypatch.setattr(record, "ORGS_PER_TRANSACTION", 2)
    _, meter, allowance = period_setup(limit="3")
    orgs = [make_org(plan=allowance.plan) for _ in range(5)]
    missing = orgs[-1].pk + 1000
    # When one batch interleaves them (the last organization twice, with a repeated key), plus an unknown one
    batch = [item(org, meter, "2", "k") for org in reversed(orgs)]
    batch += [item(missing, meter, "1", "k"), item(orgs[0], meter, "1", "k2"), item(orgs[0], meter, "2", "k")]
    transactions = []
    real_group = record._record_group

    def group(items, digests, **kwargs):
        transactions.append(sorted({i.organization_id for i in items}))
        return real_group(items, digests, **kwargs)

    monkeypatch.setattr(record, "_record_group", group)
    outs = usage_record_batch(items=batch, now=T0)
    # Then the answers are in the batch's order, each organization decided in order
    assert [o.status for o in outs] == [201] * 5 + [404, 201, 201]
    assert [o.body["from_allowance"] for o in outs[:5]] == ["2"] * 5
    assert outs[6].body["windows"][0]["used"] == "3"  # after the 2 of its first event, earlier in the batch
    assert (outs[7].body, outs[7].replayed) == (outs[4].body, True)
    # And the organizations were committed in ascending groups of 2 (the unknown one last)
    ids = sorted(org.pk for org in orgs)
    assert transactions == [ids[0:2], ids[2:4], [ids[4], missing]]
    assert [w[4] for org in orgs for w in windows(org)] == [D(3), D(2), D(2), D(2), D(2)]


def test_empty_batch_is_empty():
    assert usage_record_batch(items=[], now=T0) == []


def test_unknown_meter_is_400_and_stores_nothing():
    org, _, _ = period_setup()
    out = use(org, "no.such.meter", "1", "k1", now=T0)
    assert (out.status, out.body["error"]["code"]) == (400, "meter_not_found")
    assert events(org) == []


def test_inactive_meter_is_unknown():
    org, meter, _ = period_setup()
    meter.is_active = False
    meter.save()
    assert use(org, meter, "1", "k1", now=T0).status == 400


def test_unknown_organization_is_404():
    meter = MeterFactory()
    out = use(type("Org", (), {"pk": 987654})(), meter, "1", "k1", now=T0)
    assert (out.status, out.body["error"]["code"]) == (404, "organization_not_found")
    assert usage_authorize(organization_id=987654, meter=meter.key, quantity=D(1), now=T0).status == 404


# Spend cap -------------------------------------------------------------------------------------


def test_spend_cap_denies_past_the_monthly_cap_and_resets_next_calendar_month():
    # Given no allowance, 100 credits at 5 per unit, and a cap of 20 credits a month
    org, meter, _ = period_setup(limit="0")
    grant(org, "100")
    spend_cap_set(organization_id=org.pk, cap=D(20), now=T0)
    # When 3 units (15 credits) are used, then 2 more (10 credits: past the cap)
    assert use(org, meter, "3", "k1", now=T0).status == 201
    before = snapshot(org)
    over = use(org, meter, "2", "k2", now=T0 + H)
    # Then the second is denied with spend_cap_reached, resetting on Feb 1 UTC, and nothing is taken
    assert over.status == 402
    assert over.body["error"]["code"] == "spend_cap_reached"
    assert over.body["error"]["resets_at"] == "2026-02-01T00:00:00+00:00"
    assert snapshot(org) == before
    assert UsageEvent.objects.get(organization=org, idempotency_key="k2").decision == "denied"
    # But 1 unit (5 credits) still fits under the cap exactly
    assert use(org, meter, "1", "k3", now=T0 + 2 * H).status == 201
    assert CreditAccount.objects.get(organization=org).spend_month_total == D(20)
    assert use(org, meter, "1", "k4", now=utc(2026, 1, 31, 23, 59)).body["error"]["code"] == "spend_cap_reached"
    # And in February the count starts again
    feb = use(org, meter, "4", "k5", now=utc(2026, 2, 1))
    assert feb.status == 201
    account = CreditAccount.objects.get(organization=org)
    assert (account.spend_month, account.spend_month_total) == (date(2026, 2, 1), D(20))
    assert assert_books_balance(org) == D(60)


def test_spend_cap_does_not_count_included_usage():
    org, meter, _ = period_setup(limit="10")
    grant(org, "100")
    spend_cap_set(organization_id=org.pk, cap=D(0), now=T0)
    assert use(org, meter, "10", "k1", now=T0).status == 201
    assert use(org, meter, "1", "k2", now=T0).body["error"]["code"] == "spend_cap_reached"


def test_short_of_credits_under_a_cap_is_limit_reached_not_spend_cap():
    # Given 3 credits and a cap of 4: 1 unit (5 credits) exceeds both
    org, meter, _ = period_setup(limit="0")
    grant(org, "3")
    spend_cap_set(organization_id=org.pk, cap=D(4), now=T0)
    out = use(org, meter, "1", "k1", now=T0)
    assert out.body["error"]["code"] == "limit_reached"


# Authorize -------------------------------------------------------------------------------------


def test_authorize_answers_without_consuming_anything():
    # Given 10 included, 4 used, and 100 credits
    org, meter, allowance = period_setup()
    grant(org, "100")
    use(org, meter, "4", "k1", now=T0)
    before = snapshot(org)
    count = UsageEvent.objects.count()
    # When 8 are authorized
    out = usage_authorize(organization_id=org.pk, meter=meter.key, quantity=D(8), now=T0 + H)
    # Then it would take 6 included and 10 credits; nothing is written
    assert out.status == 200
    assert (out.body["allowed"], out.body["from_allowance"], out.body["credits_charged"]) == (True, "6", "10")
    assert out.body["windows"][0]["remaining"] == "6"
    assert out.body["credits"] == {"balance": "100"}
    assert snapshot(org) == before
    assert UsageEvent.objects.count() == count
    # When more than can be covered is authorized
    denied = usage_authorize(organization_id=org.pk, meter=meter.key, quantity=D(27), now=T0 + H)
    # Then 200 with allowed false and the denial's code
    assert (denied.status, denied.body["allowed"], denied.body["error"]["code"]) == (200, False, "limit_reached")
    assert snapshot(org) == before


def test_authorize_of_an_unused_period_window_writes_no_window():
    org, meter, _ = period_setup()
    out = usage_authorize(organization_id=org.pk, meter=meter.key, quantity=D(1), now=T0)
    assert out.body["allowed"] is True
    assert windows(org) == []


def test_authorize_unknown_meter_is_400():
    org, _, _ = period_setup()
    out = usage_authorize(organization_id=org.pk, meter="nope", quantity=D(1), now=T0)
    assert (out.status, out.body["error"]["code"]) == (400, "meter_not_found")


def test_user_id_is_stored_on_the_event():
    # user_id is part of the request (and its hash); it does not change what is consumed
    org, meter, _ = period_setup()
    user = User.objects.create_user(email="user@example.com")
    out = use(org, meter, "1", "k1", now=T0, user_id=user.pk)
    assert out.status == 201
    assert UsageEvent.objects.get(organization=org, idempotency_key="k1").user_id == user.pk
