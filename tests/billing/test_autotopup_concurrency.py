"""Auto top-up under concurrency, on PostgreSQL with real threads and a real localstripe.

Every thread opens its own connection, waits at a barrier so all start together, and closes its
connection at the end (tests/usage/test_concurrency.py's `run_threads`). The task that the usage
engine enqueues on commit runs eagerly in the thread that committed, as a worker would run it.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from billing.models import CreditPurchase
from billing.services import credits_adjust
from billing.services.autotopup import auto_topup_run, auto_topup_spent_this_month
from core.clock import now as clock_now
from tests.billing.payment_support import balance, pack
from tests.billing.stripe_fixtures import CARD_SUCCEEDS
from tests.billing.topup_support import celery_eager, org_topping_up, topups
from tests.invariants import assert_ledger_consistent
from tests.usage.test_concurrency import run_threads
from usage.services import UsageInput, usage_record

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.usefixtures("require_postgres"),
]


def test_20_threads_debiting_across_the_minimum_buy_exactly_once(localstripe):
    # given 100 credits, minimum 60, target 100, and 5 credits a call (1 unit)
    pack()
    at = clock_now()
    org, _, meter = org_topping_up(localstripe, CARD_SUCCEEDS, min_balance="60", target="100", now=at)

    # when 20 threads each use 5 credits at once (100 in all), and the top-up task runs on commit
    def work(i: int) -> int:
        item = UsageInput(organization_id=org.pk, meter=meter.key, quantity=Decimal(1), idempotency_key=f"k{i}")
        return usage_record(item=item, now=clock_now()).status

    with celery_eager():
        results, errors = run_threads(20, work)

    # then every call was allowed, and exactly one top-up was bought and paid
    assert errors == {}
    assert Counter(results.values()) == {201: 20}
    purchases = list(CreditPurchase.objects.filter(organization=org, kind="auto_topup"))
    assert len(purchases) == 1
    bought = purchases[0]
    assert bought.status == "succeeded"
    # it bought what the balance lacked when it ran (below 60, up to 100), at 10 cents a credit
    assert Decimal(40) < bought.credits <= Decimal(100)
    assert bought.amount == int(bought.credits * 10)
    assert balance(org) == Decimal(100) - Decimal(100) + bought.credits
    assert_ledger_consistent(org.pk)


def test_20_concurrent_runs_charge_once(localstripe, settings):
    settings.AUTO_TOPUP_COOLDOWN_SECONDS = 0  # only the lock and the one-in-flight rule stop a second charge
    pack()
    at = clock_now()
    org, _, _ = org_topping_up(localstripe, CARD_SUCCEEDS, min_balance="50", target="200", now=at)
    credits_adjust(organization_id=org.pk, credits=Decimal(-70), reason="used", actor_id=None, now=at)

    results, errors = run_threads(20, lambda i: auto_topup_run(organization_id=org.pk, now=clock_now()).reason)

    assert errors == {}
    reasons = Counter(results.values())
    assert reasons["charged"] == 1
    assert set(reasons) <= {"charged", "in_flight", "above_minimum"}
    assert topups(org) == [("succeeded", Decimal(170), 1700, "usd")]
    assert balance(org) == Decimal(200)
    assert_ledger_consistent(org.pk)


def test_the_monthly_cap_holds_with_concurrent_triggers(localstripe, settings):
    settings.AUTO_TOPUP_COOLDOWN_SECONDS = 0
    pack()  # 10 cents a credit
    at = clock_now()
    # given minimum 50, target 100, a cap of $21.00, and $12.00 already charged this month (two top-ups of 60)
    org, _, meter = org_topping_up(localstripe, CARD_SUCCEEDS, min_balance="50", target="100", cap=2100, now=at)
    for _ in range(2):
        credits_adjust(organization_id=org.pk, credits=Decimal(-60), reason="used", actor_id=None, now=clock_now())
        assert auto_topup_run(organization_id=org.pk, now=clock_now()).reason == "charged"
    assert auto_topup_spent_this_month(organization_id=org.pk, now=clock_now()) == 1200
    assert balance(org) == Decimal(100)

    # when 20 threads each try to use 30 credits (6 units) at once, each crossing enqueuing a top-up
    def work(i: int) -> int:
        item = UsageInput(organization_id=org.pk, meter=meter.key, quantity=Decimal(6), idempotency_key=f"k{i}")
        return usage_record(item=item, now=clock_now()).status

    with celery_eager():
        results, errors = run_threads(20, work)

    # then one more top-up at most fits under the cap ($6 or $9: the balance was 40 or 10 when it ran)
    assert errors == {}
    amounts = [p[2] for p in topups(org)]
    assert amounts[:2] == [600, 600]
    assert len(amounts) == 3 and amounts[2] in (600, 900)
    assert auto_topup_spent_this_month(organization_id=org.pk, now=clock_now()) == sum(amounts) <= 2100
    # and once below the minimum again, the cap stops the next one
    if balance(org) >= Decimal(50):
        credits_adjust(
            organization_id=org.pk, credits=-(balance(org) - Decimal(10)), reason="used", actor_id=None, now=clock_now()
        )
    assert auto_topup_run(organization_id=org.pk, now=clock_now()).reason == "monthly_cap_reached"
    assert len(topups(org)) == 3
    assert_ledger_consistent(org.pk)
