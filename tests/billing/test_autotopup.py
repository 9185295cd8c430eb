"""Auto top-up against a real localstripe: settings, pricing, the safeguards (one in flight,
cool-down, monthly cap, off after three failures), emails, and the trigger from the usage engine."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from billing import pricing
from billing.models import CreditAccount, CreditPurchase, LotCategory
from billing.selectors import auto_topup_quote
from billing.services import credits_adjust, credits_grant
from billing.services.autotopup import (
    auto_topup_configure,
    auto_topup_due,
    auto_topup_run,
    auto_topup_spent_this_month,
)
from billing.services.notices import billing_notices_send
from billing.services.purchases import purchase_start, purchases_reconcile
from core.errors import Conflict, DomainError
from tests.billing.payment_support import balance, lots, org_with_card, pack, reload
from tests.billing.stripe_fixtures import (
    CARD_DECLINED_ON_CHARGE,
    CARD_REQUIRES_ACTION,
    CARD_SUCCEEDS,
)
from tests.billing.topup_support import celery_eager, notices, org_topping_up, topups
from tests.factories import T0
from tests.invariants import assert_ledger_consistent
from usage.services import UsageInput, usage_record

pytestmark = pytest.mark.django_db

MIN = timedelta(minutes=1)


@pytest.fixture
def pack100(db):
    """100 credits for $10.00: 10 cents a credit."""
    return pack()


def account(org) -> CreditAccount:
    return CreditAccount.objects.get(organization=org)


def spend(org, credits: str, now) -> None:
    credits_adjust(organization_id=org.pk, credits=-Decimal(credits), reason="used", actor_id=None, now=now)


# Pricing ------------------------------------------------------------------------------------------


def test_price_at_pack_rate_rounds_up_to_a_whole_minor_unit(db):
    usd = pack("usd-100", credits="100", price=1000)
    yen = pack("jpy-300", credits="300", price=3000, currency="jpy")
    # 10 cents and 10 yen a credit: a third of a minor unit more is one more minor unit
    assert pricing.price_at_pack_rate(Decimal("33.3333"), usd) == 334
    assert pricing.price_at_pack_rate(Decimal("33.3333"), yen) == 334
    assert pricing.price_at_pack_rate(Decimal("150"), usd) == 1500
    assert pricing.price_at_pack_rate(Decimal("0.0001"), usd) == 1
    assert pricing.price_at_pack_rate(Decimal("0"), usd) == 0
    assert (pricing.format_money(1500, "usd"), pricing.format_money(334, "jpy")) == ("15.00", "334")


def test_the_pack_rate_is_the_cheapest_active_pack_in_the_currency(db):
    pack("small", credits="100", price=1000)
    big = pack("big", credits="500", price=4000)  # 8 cents a credit
    pack("cheaper-but-off", credits="100", price=100).__class__.objects.filter(key="cheaper-but-off").update(
        is_active=False
    )
    pack("euros", credits="100", price=1, currency="eur")
    assert pricing.pack_rate_pack("usd") == big
    assert pricing.pack_rate_pack("USD") == big
    assert pricing.pack_rate_pack("gbp") is None


# Settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_balance", "target", "cap", "code", "message"),
    [
        ("-1", "100", 5000, "validation_error", "The minimum balance cannot be negative."),
        ("100", "100", 5000, "validation_error", "The target balance must be more than the minimum balance."),
        ("50", "100", None, "validation_error", "Set a monthly limit for automatic top-ups."),
        ("50", "100", 499, "validation_error", "The monthly limit must cover at least one top-up (5.00 USD)."),
        (
            "50",
            "52",
            5000,
            "validation_error",
            "A top-up from the minimum to the target would charge less than our "
            "payment provider accepts: raise the target or lower the minimum.",
        ),
    ],
)
def test_configure_refuses_settings_that_cannot_work(localstripe, pack100, min_balance, target, cap, code, message):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    with pytest.raises(DomainError) as caught:
        auto_topup_configure(
            organization_id=org.pk,
            enabled=True,
            min_balance=Decimal(min_balance),
            target_balance=Decimal(target),
            monthly_cap=cap,
            now=T0,
            currency="usd",
        )
    assert (caught.value.code, caught.value.message) == (code, message)
    assert account(org).auto_topup_enabled is False


def test_configure_needs_a_pack_in_the_currency_and_a_card(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    with pytest.raises(DomainError) as no_pack:
        auto_topup_configure(
            organization_id=org.pk,
            enabled=True,
            min_balance=Decimal(50),
            target_balance=Decimal(200),
            monthly_cap=5000,
            now=T0,
            currency="jpy",
        )
    assert (no_pack.value.code, no_pack.value.message) == ("currency_not_sold", "Credits are not sold in JPY.")
    from tests.billing.payment_support import org_with_owner

    cardless, _ = org_with_owner()
    with pytest.raises(Conflict) as no_card:
        auto_topup_configure(
            organization_id=cardless.pk,
            enabled=True,
            min_balance=Decimal(50),
            target_balance=Decimal(200),
            monthly_cap=5000,
            now=T0,
            currency="usd",
        )
    assert (no_card.value.code, no_card.value.message) == (
        "card_required",
        "Add a card before turning on automatic top-up.",
    )


def test_configure_stores_the_settings_and_off_keeps_them(localstripe, pack100):
    org, _, _ = org_topping_up(localstripe, CARD_SUCCEEDS, now=T0, cap=3000)
    acc = account(org)
    assert (acc.auto_topup_enabled, acc.auto_topup_min_balance, acc.auto_topup_target_balance) == (
        True,
        Decimal(50),
        Decimal(200),
    )
    assert (acc.auto_topup_monthly_cap_amount, acc.auto_topup_currency, acc.auto_topup_failures) == (3000, "usd", 0)
    # what a top-up from the minimum would buy and charge: 150 credits for $15.00
    assert auto_topup_quote(organization_id=org.pk) == (Decimal(150), 1500, "usd")
    auto_topup_configure(
        organization_id=org.pk,
        enabled=False,
        min_balance=Decimal(0),
        target_balance=Decimal(0),
        monthly_cap=None,
        now=T0,
    )
    acc = account(org)
    assert (acc.auto_topup_enabled, acc.auto_topup_min_balance, acc.auto_topup_target_balance) == (
        False,
        Decimal(50),
        Decimal(200),
    )
    assert acc.balance == Decimal(100)  # the settings never touch the balance


def test_the_database_refuses_an_enabled_top_up_without_sane_settings(localstripe, pack100):
    org, _, _ = org_topping_up(localstripe, CARD_SUCCEEDS, now=T0)
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditAccount.objects.filter(organization=org).update(auto_topup_target_balance=Decimal(10))


# A top-up -------------------------------------------------------------------------------------------


def test_below_the_minimum_buys_just_enough_to_reach_the_target_and_emails(localstripe, pack100):
    # given a balance of 100, minimum 50, target 200, at 10 cents a credit
    org, owner, _ = org_topping_up(localstripe, CARD_SUCCEEDS, now=T0)
    # when 62.5 credits are spent (balance 37.5) and the top-up runs
    spend(org, "62.5", T0)
    done = auto_topup_run(organization_id=org.pk, now=T0 + MIN)
    # then 162.5 credits were bought for $16.25, paid at once, and the balance is the target
    assert done.reason == "charged"
    purchase = reload(done.purchase)
    assert purchase.pack is not None and purchase.lot is not None
    assert (purchase.kind, purchase.status, purchase.pack.key) == ("auto_topup", "succeeded", "pack-100")
    assert topups(org) == [("succeeded", Decimal("162.5"), 1625, "usd")]
    assert balance(org) == Decimal(200)
    assert lots(org)[-1] == ("paid", "auto_topup", Decimal("162.5"), Decimal("162.5"), purchase.payment_intent_id)
    assert purchase.lot.expires_at == T0 + MIN + timedelta(days=365)  # expires like the pack it is priced at
    assert purchase.lot.reason == f"Auto top-up (purchase #{purchase.pk})"
    intent = localstripe.payment_intent(purchase.payment_intent_id)
    assert (intent["amount"], intent["metadata"]["kind"]) == (1625, "auto_topup")
    assert account(org).auto_topup_last_charge_at == T0 + MIN
    assert_ledger_consistent(org.pk)
    # and one email to the owner for the charge
    assert notices(org) == [("topup_succeeded", "Auto top-up: 162.5 credits for 16.25 USD")]
    assert billing_notices_send(now=T0 + 2 * MIN) == 1
    assert billing_notices_send(now=T0 + 3 * MIN) == 0
    assert [(m.to, m.subject) for m in mail.outbox] == [([owner.email], "Auto top-up: 162.5 credits for 16.25 USD")]
    assert "with your visa ending in 4242" in mail.outbox[0].body


def test_nothing_happens_above_the_minimum_or_when_off(localstripe, pack100):
    org, _, _ = org_topping_up(localstripe, CARD_SUCCEEDS, now=T0)
    spend(org, "50", T0)  # exactly the minimum is not below it
    assert auto_topup_run(organization_id=org.pk, now=T0).reason == "above_minimum"
    spend(org, "1", T0)
    auto_topup_configure(
        organization_id=org.pk,
        enabled=False,
        min_balance=Decimal(0),
        target_balance=Decimal(0),
        monthly_cap=None,
        now=T0,
    )
    assert auto_topup_run(organization_id=org.pk, now=T0).reason == "disabled"
    assert topups(org) == []
    assert localstripe.request("GET", "/v1/payment_intents")["data"] == []


def test_cool_down_between_charges(localstripe, pack100, settings):
    settings.AUTO_TOPUP_COOLDOWN_SECONDS = 600
    org, _, _ = org_topping_up(localstripe, CARD_SUCCEEDS, now=T0)
    spend(org, "60", T0)
    assert auto_topup_run(organization_id=org.pk, now=T0).reason == "charged"
    # when the balance falls below the minimum again five minutes later
    spend(org, "160", T0 + 5 * MIN)
    # then no charge until ten minutes after the last one
    assert auto_topup_run(organization_id=org.pk, now=T0 + 5 * MIN).reason == "cooling_down"
    assert auto_topup_due(now=T0 + 5 * MIN) == []
    assert auto_topup_due(now=T0 + 10 * MIN) == [org.pk]
    assert auto_topup_run(organization_id=org.pk, now=T0 + 10 * MIN).reason == "charged"
    assert topups(org) == [
        ("succeeded", Decimal(160), 1600, "usd"),
        ("succeeded", Decimal(160), 1600, "usd"),
    ]
    assert balance(org) == Decimal(200)
    assert_ledger_consistent(org.pk)


def test_the_monthly_cap_is_never_exceeded_and_resets_next_month(localstripe, pack100, settings):
    settings.AUTO_TOPUP_COOLDOWN_SECONDS = 0
    # given a cap of $35 and top-ups of $16
    org, _, _ = org_topping_up(localstripe, CARD_SUCCEEDS, now=T0, cap=3500)
    for minute, used in ((1, "60"), (2, "160")):
        spend(org, used, T0 + minute * MIN)
        assert auto_topup_run(organization_id=org.pk, now=T0 + minute * MIN).reason == "charged"
    assert auto_topup_spent_this_month(organization_id=org.pk, now=T0 + 3 * MIN) == 3200
    # when a third $16 top-up would take the month to $48
    spend(org, "160", T0 + 3 * MIN)
    assert auto_topup_run(organization_id=org.pk, now=T0 + 3 * MIN).reason == "monthly_cap_reached"
    assert len(topups(org)) == 2
    # then next month (UTC) it charges again
    february = T0.replace(month=2, day=1, hour=0, minute=0)
    assert auto_topup_spent_this_month(organization_id=org.pk, now=february) == 0
    assert auto_topup_run(organization_id=org.pk, now=february).reason == "charged"
    assert len(topups(org)) == 3
    assert_ledger_consistent(org.pk)


def test_one_in_flight_per_organization(localstripe, pack100, settings):
    settings.AUTO_TOPUP_COOLDOWN_SECONDS = 0
    # given a top-up waiting for 3-D Secure (in flight)
    org, _, _ = org_topping_up(localstripe, CARD_REQUIRES_ACTION, now=T0)
    spend(org, "60", T0)
    first = auto_topup_run(organization_id=org.pk, now=T0)
    assert (first.reason, reload(first.purchase).status) == ("charged", "requires_action")
    # when it is asked again, then nothing more is bought
    assert auto_topup_run(organization_id=org.pk, now=T0 + MIN).reason == "in_flight"
    assert auto_topup_due(now=T0 + MIN) == []
    # and the database itself refuses a second top-up in flight
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditPurchase.objects.create(
            organization=org,
            kind="auto_topup",
            credits=Decimal(1),
            amount=100,
            currency="usd",
            created_at=T0,
            updated_at=T0,
        )
    # when the customer completes authentication, the sweep grants it and the owner is emailed
    localstripe.payment_intent_authenticate(reload(first.purchase).payment_intent_id)
    purchases_reconcile(now=T0 + 10 * MIN)
    assert topups(org) == [("succeeded", Decimal(160), 1600, "usd")]
    assert balance(org) == Decimal(200)
    assert notices(org) == [("topup_succeeded", "Auto top-up: 160 credits for 16.00 USD")]
    assert_ledger_consistent(org.pk)


def test_three_failures_in_a_row_turn_it_off_and_email(localstripe, pack100):
    # given the 0341 card, which attaches and then declines every charge
    org, owner, _ = org_topping_up(localstripe, CARD_DECLINED_ON_CHARGE, now=T0)
    spend(org, "60", T0)
    # when the top-up is tried three times, ten minutes apart (the cool-down)
    reasons = [auto_topup_run(organization_id=org.pk, now=T0 + n * 10 * MIN).reason for n in range(3)]
    # then each failed, with no credits, and auto top-up is off after the third
    assert reasons == ["charged", "charged", "charged"]
    assert topups(org) == [("failed", Decimal(160), 1600, "usd")] * 3
    acc = account(org)
    assert (acc.auto_topup_enabled, acc.auto_topup_failures) == (False, 3)
    assert balance(org) == Decimal(40)
    assert auto_topup_run(organization_id=org.pk, now=T0 + 40 * MIN).reason == "disabled"
    assert auto_topup_due(now=T0 + 40 * MIN) == []
    # and the owner got an email for every failed charge, and one saying it is off
    assert notices(org) == [
        ("topup_failed", "Auto top-up failed"),
        ("topup_failed", "Auto top-up failed"),
        ("topup_failed", "Auto top-up failed"),
        ("topup_disabled", "Auto top-up is turned off"),
    ]
    assert billing_notices_send(now=T0 + 40 * MIN) == 4
    assert [m.to for m in mail.outbox] == [[owner.email]] * 4
    assert "We could not top up your credits: Your card was declined." in mail.outbox[0].body
    assert "This is failure 3 of 3 in a row" in mail.outbox[2].body
    assert_ledger_consistent(org.pk)
    # when the owner turns it on again, the count starts over
    auto_topup_configure(
        organization_id=org.pk,
        enabled=True,
        min_balance=Decimal(10),
        target_balance=Decimal(200),
        monthly_cap=10_000,
        now=T0 + 50 * MIN,
        currency="usd",
    )
    assert (account(org).auto_topup_enabled, account(org).auto_topup_failures) == (True, 0)


def test_a_success_resets_the_failure_count(localstripe, pack100):
    org, _, _ = org_topping_up(localstripe, CARD_DECLINED_ON_CHARGE, now=T0)
    spend(org, "60", T0)
    auto_topup_run(organization_id=org.pk, now=T0)
    assert account(org).auto_topup_failures == 1
    # when a good card replaces it
    from billing.services.purchases import card_set_default

    card_set_default(organization_id=org.pk, payment_method_id=localstripe.payment_method_create(CARD_SUCCEEDS), now=T0)
    assert auto_topup_run(organization_id=org.pk, now=T0 + 10 * MIN).reason == "charged"
    assert account(org).auto_topup_failures == 0
    assert [p[0] for p in topups(org)] == ["failed", "succeeded"]


def test_a_removed_card_counts_as_a_failure(localstripe, pack100):
    org, _, _ = org_topping_up(localstripe, CARD_SUCCEEDS, now=T0)
    from billing.models import StripeCustomer

    StripeCustomer.objects.filter(organization=org).update(default_payment_method_id="")
    spend(org, "60", T0)
    assert auto_topup_run(organization_id=org.pk, now=T0).reason == "no_card"
    assert auto_topup_run(organization_id=org.pk, now=T0 + MIN).reason == "cooling_down"
    assert (account(org).auto_topup_failures, topups(org)) == (1, [])
    assert notices(org) == [("topup_failed", "Auto top-up failed")]


def test_turning_it_on_below_the_minimum_buys_at_once(localstripe, pack100, django_capture_on_commit_callbacks):
    # given an organization with 10 credits and a card
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    credits_grant(organization_id=org.pk, credits=Decimal(10), now=T0, category=LotCategory.PAID)
    # when the owner turns auto top-up on with a minimum of 50 (the task runs as a worker would)
    with celery_eager(), django_capture_on_commit_callbacks(execute=True) as callbacks:
        auto_topup_configure(
            organization_id=org.pk,
            enabled=True,
            min_balance=Decimal(50),
            target_balance=Decimal(100),
            monthly_cap=5000,
            now=T0,
            currency="usd",
        )
    # then 90 credits are bought straight away
    assert len(callbacks) == 1
    assert topups(org) == [("succeeded", Decimal(90), 900, "usd")]
    assert balance(org) == Decimal(100)
    assert_ledger_consistent(org.pk)


def test_buying_a_pack_never_turns_auto_top_up_on(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    assert account(org).auto_topup_enabled is False
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    assert reload(purchase).status == "succeeded"
    acc = account(org)
    assert (acc.auto_topup_enabled, acc.auto_topup_min_balance, acc.auto_topup_monthly_cap_amount) == (
        False,
        Decimal(0),
        None,
    )
    assert auto_topup_run(organization_id=org.pk, now=T0).reason == "disabled"


# The trigger in the usage engine -------------------------------------------------------------------


def test_usage_enqueues_a_run_when_a_debit_crosses_the_minimum(
    localstripe, pack100, monkeypatch, django_capture_on_commit_callbacks
):
    from billing import tasks

    enqueued: list[int] = []
    monkeypatch.setattr(tasks.auto_topup_run, "delay", enqueued.append)
    # given 100 credits, minimum 50, and 15 credits a call (3 units at 5 credits)
    org, _, meter = org_topping_up(localstripe, CARD_SUCCEEDS, now=T0)

    def use(key: str) -> int:
        item = UsageInput(organization_id=org.pk, meter=meter.key, quantity=Decimal(3), idempotency_key=key)
        with django_capture_on_commit_callbacks(execute=True):
            return usage_record(item=item, now=T0).status

    # when the balance goes 100 -> 85 -> 70 -> 55 -> 40 -> 25
    statuses = [use(f"k{i}") for i in range(5)]
    # then the run is enqueued once, by the call that crossed the minimum (55 -> 40)
    assert statuses == [201] * 5
    assert enqueued == [org.pk]
    assert balance(org) == Decimal(25)


def test_the_trigger_costs_the_usage_path_no_query(localstripe, pack100, monkeypatch):
    from billing import tasks

    monkeypatch.setattr(tasks.auto_topup_run, "delay", lambda org_id: None)
    org, _, meter = org_topping_up(localstripe, CARD_SUCCEEDS, balance="1000", now=T0)

    def queries(key: str) -> int:
        item = UsageInput(organization_id=org.pk, meter=meter.key, quantity=Decimal(1), idempotency_key=key)
        with CaptureQueriesContext(connection) as ctx:
            assert usage_record(item=item, now=T0).status == 201
        return len(ctx.captured_queries)

    queries("warm-up")  # the first call also loads the catalogue
    on = [queries("on-1"), queries("on-2")]
    CreditAccount.objects.filter(organization=org).update(auto_topup_enabled=False)
    off = [queries("off-1"), queries("off-2")]
    assert on == off
