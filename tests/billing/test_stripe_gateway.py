"""billing.stripe_gateway against a real localstripe process: Stripe's test cards, our types and
our customer-worded errors."""

from __future__ import annotations

import pytest
from django.conf import settings

from billing import stripe_gateway as gw
from tests.billing.stripe_fixtures import (
    CARD_DECLINED_ON_ATTACH,
    CARD_DECLINED_ON_CHARGE,
    CARD_REQUIRES_ACTION,
    CARD_SUCCEEDS,
)


@pytest.fixture
def customer(localstripe):
    return gw.customer_create(email="owner@example.com", name="Org 1", metadata={"organization_id": "1"})


def charge(customer, pm, *, key="purchase:1", amount=1000):
    return gw.payment_intent_create_and_confirm_off_session(
        amount=amount,
        currency="usd",
        customer=customer,
        payment_method=pm,
        idempotency_key=key,
        metadata={"purchase_id": "1"},
    )


def test_the_fixture_points_settings_at_a_running_localstripe(localstripe):
    assert localstripe.url == settings.STRIPE_API_HOST
    assert localstripe.process.poll() is None
    assert localstripe.url.startswith("http://127.0.0.1:")


def test_customer_and_setup_intent(localstripe, customer):
    # given a customer, when a SetupIntent is created for the browser
    setup = gw.setup_intent_create(customer=customer)
    # then it has a client secret of its own and waits for a card
    assert customer.startswith("cus_")
    assert setup.id.startswith("seti_")
    assert setup.client_secret.startswith(f"{setup.id}_secret_")
    assert setup.status == "requires_payment_method"


def test_attach_list_and_detach_cards(localstripe, customer):
    # given two cards attached
    visa = gw.payment_method_attach(payment_method=localstripe.payment_method_create(CARD_SUCCEEDS), customer=customer)
    other = gw.payment_method_attach(
        payment_method=localstripe.payment_method_create(CARD_DECLINED_ON_CHARGE), customer=customer
    )
    assert (visa.brand, visa.last4, visa.exp_month, visa.exp_year) == ("visa", "4242", 12, 2034)
    assert {c.id: c.last4 for c in gw.payment_method_list(customer=customer)} == {visa.id: "4242", other.id: "0341"}
    # when one is detached
    gw.payment_method_detach(payment_method=other.id)
    # then only the other is listed, and the detached one belongs to nobody
    assert [c.id for c in gw.payment_method_list(customer=customer)] == [visa.id]
    card, owner = gw.payment_method_retrieve(payment_method=other.id)
    assert (card.last4, owner) == ("0341", None)


def test_card_declined_at_attach_raises_a_customer_message(localstripe, customer):
    pm = localstripe.payment_method_create(CARD_DECLINED_ON_ATTACH)
    with pytest.raises(gw.CardDeclinedError) as caught:
        gw.payment_method_attach(payment_method=pm, customer=customer)
    assert caught.value.message == "Your card was declined."
    assert caught.value.code == "card_declined"
    assert caught.value.status == 402
    assert gw.payment_method_list(customer=customer) == []


def test_charge_succeeds_with_4242(localstripe, customer):
    pm = gw.payment_method_attach(payment_method=localstripe.payment_method_create(CARD_SUCCEEDS), customer=customer)
    intent = charge(customer, pm.id, amount=1999)
    assert intent.status == "succeeded"
    assert (intent.amount, intent.currency, intent.customer) == (1999, "usd", customer)
    assert (intent.card_brand, intent.card_last4) == ("visa", "4242")
    assert intent.metadata == {"purchase_id": "1"}
    assert intent.error_code is None and intent.customer_message is None
    # and reading it back gives the same state
    again = gw.payment_intent_retrieve(payment_intent=intent.id)
    assert (again.id, again.status, again.card_last4) == (intent.id, "succeeded", "4242")


def test_charge_declined_with_0341(localstripe, customer):
    pm = gw.payment_method_attach(
        payment_method=localstripe.payment_method_create(CARD_DECLINED_ON_CHARGE), customer=customer
    )
    with pytest.raises(gw.CardDeclinedError) as caught:
        charge(customer, pm.id)
    assert (caught.value.code, caught.value.message) == ("card_declined", "Your card was declined.")
    # localstripe gives no intent id with the error (Stripe does); either is handled
    assert caught.value.payment_intent_id is None
    assert [(c["status"], c["failure_code"]) for c in localstripe.charges()] == [("failed", "card_declined")]


def test_charge_requires_action_with_3155_then_authenticated(localstripe, customer):
    pm = gw.payment_method_attach(
        payment_method=localstripe.payment_method_create(CARD_REQUIRES_ACTION), customer=customer
    )
    intent = charge(customer, pm.id)
    assert intent.status == "requires_action"
    assert intent.client_secret.startswith(f"{intent.id}_secret_")
    # when the customer completes 3-D Secure in the browser
    localstripe.payment_intent_authenticate(intent.id)
    # then the intent has succeeded
    done = gw.payment_intent_retrieve(payment_intent=intent.id)
    assert (done.status, done.card_last4) == ("succeeded", "3155")


def test_failed_authentication_leaves_the_intent_failed_with_a_reason(localstripe, customer):
    pm = gw.payment_method_attach(
        payment_method=localstripe.payment_method_create(CARD_REQUIRES_ACTION), customer=customer
    )
    intent = charge(customer, pm.id)
    localstripe.payment_intent_authenticate(intent.id, success=False)
    failed = gw.payment_intent_retrieve(payment_intent=intent.id)
    assert failed.status == "requires_payment_method"


def test_refund_part_of_a_payment(localstripe, customer):
    pm = gw.payment_method_attach(payment_method=localstripe.payment_method_create(CARD_SUCCEEDS), customer=customer)
    intent = charge(customer, pm.id, amount=1000)
    refund = gw.refund_create(payment_intent=intent.id, amount=250, idempotency_key="refund:1")
    assert refund.id.startswith("re_")
    assert (refund.amount, refund.currency, refund.status, refund.payment_intent_id) == (
        250,
        "usd",
        "succeeded",
        intent.id,
    )
    assert [c["amount_refunded"] for c in localstripe.charges()] == [250]


def test_unknown_payment_method_is_an_invalid_request(localstripe, customer):
    with pytest.raises(gw.PaymentRequestError):
        gw.payment_method_attach(payment_method="pm_doesnotexist", customer=customer)


def test_unreachable_stripe_is_a_provider_error(localstripe, settings):
    settings.STRIPE_API_HOST = "http://127.0.0.1:9"
    with pytest.raises(gw.PaymentProviderError) as caught:
        gw.customer_create(email="a@example.com", name="x", metadata={})
    assert caught.value.status == 503


def test_intent_from_webhook_data_reads_the_card_and_the_error():
    data = {
        "id": "pi_1",
        "object": "payment_intent",
        "status": "requires_payment_method",
        "amount": 500,
        "currency": "jpy",
        "customer": "cus_1",
        "metadata": {"purchase_id": "9"},
        "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds", "message": "x"},
        "latest_charge": {"payment_method_details": {"card": {"brand": "mastercard", "last4": "4444"}}},
        "payment_method": "pm_1",
    }
    intent = gw.intent_from_data(data)
    assert (intent.error_code, intent.customer_message) == ("insufficient_funds", "Your card has insufficient funds.")
    assert (intent.card_brand, intent.card_last4, intent.amount, intent.currency) == ("mastercard", "4444", 500, "jpy")
    assert intent.metadata == {"purchase_id": "9"}
