"""purchase_refund's Stripe idempotency key (one per refund attempt, stable for a retry) and
refunds of purchases without a lot (renewals, upgrades), against localstripe."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import stripe_gateway
from billing.models import CreditPurchase, PurchaseKind, PurchaseStatus
from billing.services import purchases as purchases_service
from billing.services.purchases import purchase_refund, purchase_start
from tests.billing.payment_support import balance, ledger, org_with_card, pack, reload
from tests.billing.stripe_fixtures import CARD_SUCCEEDS
from tests.billing.test_webhooks import post_event
from tests.factories import T0
from tests.invariants import assert_ledger_consistent

pytestmark = pytest.mark.django_db


@pytest.fixture
def refund_keys(monkeypatch):
    """The idempotency keys purchase_refund sends to Stripe, in order."""
    keys: list[str] = []
    real = stripe_gateway.refund_create

    def recording(**kwargs):
        keys.append(kwargs["idempotency_key"])
        return real(**kwargs)

    monkeypatch.setattr(stripe_gateway, "refund_create", recording)
    return keys


def paid_pack(localstripe):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    pack()
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    return org, reload(purchase)


def test_two_equal_partial_refunds_are_two_refunds(localstripe, refund_keys):
    # given a paid 100-credit pack for 10.00
    org, purchase = paid_pack(localstripe)
    # when the admin deliberately refunds 3.00 twice
    first = purchase_refund(purchase_id=purchase.pk, amount=300, now=T0)
    second = purchase_refund(purchase_id=purchase.pk, amount=300, now=T0)
    # then Stripe made two refunds (distinct keys), and 30 credits were taken back for each
    assert refund_keys == [f"refund:purchase:{purchase.pk}:0:300", f"refund:purchase:{purchase.pk}:1:300"]
    assert [r["amount"] for r in localstripe.charges()[0]["refunds"]["data"]] == [300, 300]
    assert (first, second) == (Decimal(30), Decimal(30))
    assert [(kind, amount) for kind, amount, _, _ in ledger(org)] == [
        ("grant", Decimal(100)),
        ("clawback", Decimal(-30)),
        ("clawback", Decimal(-30)),
    ]
    assert balance(org) == Decimal(40)
    assert reload(purchase).status == "succeeded"
    assert_ledger_consistent(org.pk)


def test_a_retry_after_a_crash_resends_the_same_key(localstripe, refund_keys, monkeypatch):
    org, purchase = paid_pack(localstripe)
    real_record = purchases_service.purchase_refund_record
    calls = {"n": 0}

    def crash_once(**kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("worker died after Stripe answered")
        return real_record(**kwargs)

    monkeypatch.setattr(purchases_service, "purchase_refund_record", crash_once)
    # when the first attempt dies after Stripe's answer, and the admin retries
    with pytest.raises(ConnectionError):
        purchase_refund(purchase_id=purchase.pk, amount=300, now=T0)
    purchase_refund(purchase_id=purchase.pk, amount=300, now=T0)
    # then the retry carries the first attempt's key (Stripe answers it with the same refund)
    assert refund_keys == [f"refund:purchase:{purchase.pk}:0:300"] * 2
    assert_ledger_consistent(org.pk)


def renewal_paid(localstripe, org) -> CreditPurchase:
    """A paid renewal (no lot) with a real succeeded PaymentIntent in localstripe."""
    customer = org.stripe_customer
    intent = localstripe.request(
        "POST",
        "/v1/payment_intents",
        {
            "amount": 2000,
            "currency": "usd",
            "customer": customer.customer_id,
            "payment_method": customer.default_payment_method_id,
            "confirm": "true",
            "off_session": "true",
        },
    )
    assert intent["status"] == "succeeded"
    sub = org.subscription
    return CreditPurchase.objects.create(
        organization=org,
        kind=PurchaseKind.RENEWAL,
        credits=0,
        amount=2000,
        currency="usd",
        status=PurchaseStatus.SUCCEEDED,
        payment_intent_id=intent["id"],
        subscription=sub,
        plan=sub.plan,
        period_start=T0,
        created_at=T0,
        updated_at=T0,
        paid_at=T0,
    )


def test_a_refunded_renewal_shows_refunded(localstripe):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    renewal = renewal_paid(localstripe, org)
    # when the renewal is refunded in full from the admin
    taken = purchase_refund(purchase_id=renewal.pk, now=T0)
    # then it is marked refunded (no credits: a plan period has no lot)
    assert taken == Decimal(0)
    assert reload(renewal).status == "refunded"
    assert ledger(org) == []


def test_a_partly_refunded_renewal_stays_paid_and_two_equal_partials_are_two(localstripe, refund_keys):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    renewal = renewal_paid(localstripe, org)
    purchase_refund(purchase_id=renewal.pk, amount=500, now=T0)
    purchase_refund(purchase_id=renewal.pk, amount=500, now=T0)
    assert refund_keys == [f"refund:purchase:{renewal.pk}:0:500", f"refund:purchase:{renewal.pk}:1:500"]
    assert reload(renewal).status == "succeeded"


def test_charge_refunded_webhook_marks_a_renewal_refunded(client, localstripe, djstripe_endpoint):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    renewal = renewal_paid(localstripe, org)
    # given a full refund made in Stripe's dashboard, which only the webhook reports
    localstripe.request("POST", "/v1/refunds", {"payment_intent": renewal.payment_intent_id})
    charge = localstripe.charges()[0]
    assert charge["amount_refunded"] == 2000
    response, _ = post_event(client, djstripe_endpoint, "charge.refunded", charge)
    assert response.status_code == 200
    assert reload(renewal).status == "refunded"
    assert ledger(org) == []
