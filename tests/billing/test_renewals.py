"""Paid plans against a real localstripe: the upgrade (a fresh period at full price), renewals once
per period whatever the beat does, past due, retries, and the fall back to the free plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import IntegrityError, transaction

from billing import stripe_gateway as gw
from billing.models import BillingNotice, CreditPurchase, StripeCustomer
from billing.services.notices import billing_notices_send
from billing.services.purchases import card_set_default, purchase_settle, purchases_reconcile
from billing.services.renewals import renewal_charge, renewals_due, renewals_run_due, subscription_upgrade
from core.errors import Conflict, DomainError, NotFound
from plans.models import Plan, Subscription
from tests.billing.payment_support import assert_nothing_granted, org_with_card, org_with_owner, reload
from tests.billing.stripe_fixtures import (
    CARD_DECLINED_ON_CHARGE,
    CARD_REQUIRES_ACTION,
    CARD_SUCCEEDS,
)
from tests.factories import T0, PlanFactory, make_org
from tests.invariants import assert_ledger_consistent

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)
P1 = datetime(2026, 2, 15, 12, 0, tzinfo=UTC)  # T0 + 1 month: the first renewal
P2 = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
P3 = datetime(2026, 4, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def plans(db):
    free = Plan.objects.create(key="free", name="Free", price_amount=0, is_default=True)
    pro = Plan.objects.create(key="pro", name="Pro", price_amount=2000, currency="usd")
    return free, pro


def on_free(localstripe, number: str, free: Plan):
    org, owner = org_with_card(localstripe, number)
    Subscription.objects.filter(organization=org).update(plan=free)
    return org, owner


def subscription(org) -> Subscription:
    return Subscription.objects.select_related("plan").get(organization=org)


def state(org) -> tuple[str, str, datetime, datetime | None, int]:
    sub = subscription(org)
    return sub.plan.key, sub.status, sub.anchor, sub.paid_through, sub.renewal_failures


def charges(org) -> list[tuple[str, str, int, datetime | None]]:
    return [
        (p.kind, p.status, p.amount, p.period_start)
        for p in CreditPurchase.objects.filter(organization=org).order_by("id")
    ]


def notices(org) -> list[str]:
    return list(BillingNotice.objects.filter(organization=org).order_by("id").values_list("kind", flat=True))


def upgraded(localstripe, plans, number: str = CARD_SUCCEEDS):
    free, _ = plans
    org, owner = on_free(localstripe, number, free)
    result = subscription_upgrade(organization_id=org.pk, plan_key="pro", now=T0)
    assert reload(result.purchase).status == "succeeded"
    return org, owner


# Upgrade -------------------------------------------------------------------------------------------


def test_upgrade_charges_the_full_price_for_a_fresh_period(localstripe, plans):
    free, _ = plans
    org, owner = on_free(localstripe, CARD_SUCCEEDS, free)
    # when the owner moves to Pro ($20.00 a month)
    result = subscription_upgrade(organization_id=org.pk, plan_key="pro", now=T0, actor_id=owner.pk)
    # then the card is charged once, and Pro runs from now for a month
    purchase = reload(result.purchase)
    assert (purchase.kind, purchase.status, purchase.amount, purchase.currency, purchase.credits) == (
        "plan_upgrade",
        "succeeded",
        2000,
        "usd",
        Decimal(0),
    )
    assert (purchase.lot, purchase.paid_at, purchase.card_last4) == (None, T0, "4242")
    assert state(org) == ("pro", "active", T0, P1, 0)
    intent = localstripe.payment_intent(purchase.payment_intent_id)
    assert (intent["amount"], intent["metadata"]["kind"]) == (2000, "plan_upgrade")
    # and no credits moved; the owner is told
    assert_nothing_granted(org)
    assert notices(org) == ["plan_started"]
    assert billing_notices_send(now=T0) == 1
    assert mail.outbox[0].subject == "Welcome to the Pro plan"
    assert mail.outbox[0].to == [owner.email]
    assert "runs from 2026-01-15 to 2026-02-15 (UTC)" in mail.outbox[0].body


def test_a_declined_upgrade_changes_nothing(localstripe, plans):
    free, _ = plans
    org, _ = on_free(localstripe, CARD_DECLINED_ON_CHARGE, free)
    result = subscription_upgrade(organization_id=org.pk, plan_key="pro", now=T0)
    purchase = reload(result.purchase)
    assert (purchase.status, purchase.failure_message) == ("failed", "Your card was declined.")
    assert state(org)[0:2] == ("free", "active")
    assert subscription(org).paid_through is None
    assert notices(org) == []


def test_an_upgrade_needing_3d_secure_changes_the_plan_when_paid(localstripe, plans):
    free, _ = plans
    org, _ = on_free(localstripe, CARD_REQUIRES_ACTION, free)
    result = subscription_upgrade(organization_id=org.pk, plan_key="pro", now=T0)
    assert reload(result.purchase).status == "requires_action"
    assert result.client_secret is not None
    assert state(org)[0] == "free"
    # a second upgrade while this one is in flight is refused
    with pytest.raises(Conflict) as busy:
        subscription_upgrade(organization_id=org.pk, plan_key="pro", now=T0)
    assert busy.value.code == "plan_payment_in_progress"
    # when the customer authenticates and the sweep learns it, the plan starts then
    localstripe.payment_intent_authenticate(result.purchase.payment_intent_id)
    purchases_reconcile(now=T0 + timedelta(minutes=10))
    assert state(org) == ("pro", "active", T0 + timedelta(minutes=10), P1 + timedelta(minutes=10), 0)


def test_upgrade_refuses_what_it_cannot_do(localstripe, plans):
    free, _ = plans
    org, _ = on_free(localstripe, CARD_SUCCEEDS, free)
    Plan.objects.create(key="secret", name="Secret", price_amount=100, is_public=False)
    for key, error, code in (
        ("nope", NotFound, "plan_not_found"),
        ("secret", NotFound, "plan_not_found"),
        ("free", DomainError, "plan_not_paid"),
    ):
        with pytest.raises(error) as caught:
            subscription_upgrade(organization_id=org.pk, plan_key=key, now=T0)
        assert caught.value.code == code
    subscription_upgrade(organization_id=org.pk, plan_key="pro", now=T0)
    with pytest.raises(Conflict) as same:
        subscription_upgrade(organization_id=org.pk, plan_key="pro", now=T0)
    assert (same.value.code, same.value.message) == ("already_on_plan", "You are already on the Pro plan.")
    cardless, _ = org_with_owner()
    with pytest.raises(Conflict) as no_card:
        subscription_upgrade(organization_id=cardless.pk, plan_key="pro", now=T0)
    assert no_card.value.code == "card_required"
    assert len(charges(org)) == 1


# Renewals ---------------------------------------------------------------------------------------------


def test_the_renewal_run_twice_in_a_period_charges_once(localstripe, plans):
    org, owner = upgraded(localstripe, plans)
    # before the period ends there is nothing to do
    assert renewals_run_due(now=P1 - timedelta(seconds=1)) == 0
    # when the task runs at the period start, twice, and again an hour later
    assert renewals_run_due(now=P1) == 1
    assert renewals_run_due(now=P1) == 0
    assert renewals_run_due(now=P1 + timedelta(hours=1)) == 0
    # then one renewal for that period, paid, and the subscription is paid through the next
    assert charges(org) == [
        ("plan_upgrade", "succeeded", 2000, T0),
        ("renewal", "succeeded", 2000, P1),
    ]
    assert state(org) == ("pro", "active", T0, P2, 0)
    assert len(localstripe.request("GET", "/v1/payment_intents")["data"]) == 2
    assert notices(org) == ["plan_started", "renewal_succeeded"]
    billing_notices_send(now=P1)
    assert [m.subject for m in mail.outbox] == ["Welcome to the Pro plan", "Your Pro plan is renewed"]
    assert "from 2026-02-15 to 2026-03-15 (UTC)" in mail.outbox[1].body
    assert_nothing_granted(org)


def test_a_settled_renewal_settled_again_changes_nothing(localstripe, plans):
    org, _ = upgraded(localstripe, plans)
    renewals_run_due(now=P1)
    renewal = CreditPurchase.objects.get(organization=org, kind="renewal")
    assert renewal.payment_intent_id is not None
    intent = gw.payment_intent_retrieve(payment_intent=renewal.payment_intent_id)
    # when the webhook and the sweep report the same payment later
    purchase_settle(intent=intent, now=P1 + DAY)
    purchase_settle(intent=intent, now=P1 + DAY)
    # then the subscription is still paid through one period, not three
    assert state(org) == ("pro", "active", T0, P2, 0)
    assert notices(org) == ["plan_started", "renewal_succeeded"]


def test_beat_down_for_three_days_renews_once_on_catch_up(localstripe, plans):
    org, _ = upgraded(localstripe, plans)
    # when the first run after the period start comes three days late, and again
    assert renewals_run_due(now=P1 + 3 * DAY) == 1
    assert renewals_run_due(now=P1 + 3 * DAY + timedelta(minutes=5)) == 0
    # then the period that started three days ago is charged once; the anchor does not move
    assert charges(org)[1:] == [("renewal", "succeeded", 2000, P1)]
    assert state(org) == ("pro", "active", T0, P2, 0)


def test_an_outage_longer_than_a_period_charges_only_the_current_one(localstripe, plans):
    org, _ = upgraded(localstripe, plans)
    assert renewals_run_due(now=P2 + DAY) == 1
    assert charges(org)[1:] == [("renewal", "succeeded", 2000, P2)]
    assert state(org) == ("pro", "active", T0, P3, 0)


def test_the_database_allows_one_renewal_per_period(localstripe, plans):
    org, _ = upgraded(localstripe, plans)
    renewals_run_due(now=P1)
    sub = subscription(org)
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditPurchase.objects.create(
            organization=org,
            kind="renewal",
            subscription=sub,
            plan=sub.plan,
            period_start=P1,
            credits=0,
            amount=2000,
            currency="usd",
            created_at=P1,
            updated_at=P1,
        )


def test_a_failed_card_goes_past_due_then_to_the_free_plan(localstripe, plans):
    # given Pro paid until P1 with a good card, then a card that declines every charge
    org, owner = upgraded(localstripe, plans)
    card_set_default(
        organization_id=org.pk, payment_method_id=localstripe.payment_method_create(CARD_DECLINED_ON_CHARGE), now=T0
    )
    # when the renewal fails at the period start
    assert renewals_run_due(now=P1) == 1
    # then the subscription is past due and will be retried a day later
    assert state(org) == ("pro", "past_due", T0, P1, 1)
    assert subscription(org).past_due_since == P1
    assert renewal_charge(organization_id=org.pk, now=P1 + 12 * timedelta(hours=1)).reason == "retry_later"
    # the second attempt, a day later, fails too; the third comes three days after the first
    assert renewals_run_due(now=P1 + DAY) == 1
    assert state(org) == ("pro", "past_due", T0, P1, 2)
    assert renewals_run_due(now=P1 + 2 * DAY) == 0
    # when the third attempt fails, the organization is on the free plan from then on
    assert renewals_run_due(now=P1 + 3 * DAY) == 1
    assert state(org) == ("free", "active", P1 + 3 * DAY, None, 0)
    assert subscription(org).past_due_since is None
    assert [c[0:2] for c in charges(org)] == [
        ("plan_upgrade", "succeeded"),
        ("renewal", "failed"),
        ("renewal", "failed"),
        ("renewal", "failed"),
    ]
    # and nothing more is ever charged for it
    assert renewals_due(now=P1 + 40 * DAY) == []
    # with an email at each step
    assert notices(org) == ["plan_started", "renewal_failed", "renewal_failed", "plan_downgraded"]
    assert billing_notices_send(now=P1 + 3 * DAY) == 4
    bodies = [m.body for m in mail.outbox]
    assert "We will try again on 2026-02-16 12:00 UTC." in bodies[1]
    assert "We will try again on 2026-02-18 12:00 UTC." in bodies[2]
    assert mail.outbox[3].subject == "Your Pro plan has ended"
    assert "after 3 attempts (Your card was declined.). You are now on the Free plan." in bodies[3]
    assert_ledger_consistent(org.pk)


def test_a_renewal_never_authenticated_fails_after_a_day_and_is_retried(localstripe, plans):
    org, _ = upgraded(localstripe, plans)
    card_set_default(
        organization_id=org.pk, payment_method_id=localstripe.payment_method_create(CARD_REQUIRES_ACTION), now=T0
    )
    # the renewal waits for 3-D Secure, and nothing else is charged meanwhile
    assert renewals_run_due(now=P1) == 1
    assert charges(org)[-1][0:2] == ("renewal", "requires_action")
    assert renewal_charge(organization_id=org.pk, now=P1 + DAY).reason == "in_flight"
    assert state(org) == ("pro", "active", T0, P1, 0)
    # when a day has passed unconfirmed, the sweep fails it: past due, retried a day later
    purchases_reconcile(now=P1 + DAY + timedelta(minutes=10))
    renewal = CreditPurchase.objects.get(organization=org, kind="renewal")
    assert (renewal.status, renewal.failure_code) == ("failed", "authentication_not_completed")
    assert state(org) == ("pro", "past_due", T0, P1, 1)
    assert notices(org) == ["plan_started", "renewal_failed"]


def test_a_good_card_during_the_retries_ends_past_due(localstripe, plans):
    org, _ = upgraded(localstripe, plans)
    StripeCustomer.objects.filter(organization=org).update(default_payment_method_id="")
    assert renewal_charge(organization_id=org.pk, now=P1).reason == "no_card"
    assert state(org) == ("pro", "past_due", T0, P1, 1)
    card_set_default(organization_id=org.pk, payment_method_id=localstripe.payment_method_create(CARD_SUCCEEDS), now=P1)
    assert renewals_run_due(now=P1 + DAY) == 1
    assert state(org) == ("pro", "active", T0, P2, 0)
    assert notices(org) == ["plan_started", "renewal_failed", "renewal_succeeded"]


def test_a_plan_assigned_without_a_charge_is_never_charged(localstripe, plans):
    # an admin put this organization on a paid plan (comped or invoiced elsewhere)
    org = make_org(plan=PlanFactory(price_amount=5000))
    assert subscription(org).paid_through is None
    assert renewals_due(now=T0 + 400 * DAY) == []
    assert renewal_charge(organization_id=org.pk, now=T0 + 40 * DAY).reason == "not_due"
    assert CreditPurchase.objects.count() == 0
