"""Card on file and credit-pack purchases against a real localstripe: Stripe's test cards, the
purchase's final state, the credits and the ledger; one grant per payment whatever the path."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from billing import stripe_gateway as gw
from billing.models import CreditPurchase, StripeCustomer
from billing.selectors import cards_list
from billing.services import credits_adjust
from billing.services.purchases import (
    card_remove,
    card_set_default,
    card_setup_start,
    purchase_refund,
    purchase_refund_record,
    purchase_settle,
    purchase_start,
    purchases_reconcile,
)
from core.errors import Conflict, NotFound
from tests.billing.payment_support import (
    assert_nothing_granted,
    assert_paid_once,
    balance,
    intent_id,
    ledger,
    org_with_card,
    org_with_owner,
    pack,
    reload,
)
from tests.billing.stripe_fixtures import (
    CARD_DECLINED_ON_ATTACH,
    CARD_DECLINED_ON_CHARGE,
    CARD_REQUIRES_ACTION,
    CARD_SUCCEEDS,
)
from tests.factories import T0
from tests.invariants import assert_ledger_consistent

pytestmark = pytest.mark.django_db

LATER = T0 + timedelta(minutes=10)


@pytest.fixture
def pack100(db):
    return pack()


# Card on file ----------------------------------------------------------------------------------


def test_setup_creates_the_customer_once_and_returns_a_client_secret(localstripe):
    org, owner = org_with_owner()
    # when the card form is opened twice
    first = card_setup_start(organization_id=org.pk, now=T0)
    second = card_setup_start(organization_id=org.pk, now=T0)
    # then one Stripe customer, two setup intents with their own secrets
    customer = StripeCustomer.objects.get(organization=org)
    assert first.customer_id == second.customer_id == customer.customer_id
    assert first.client_secret.startswith(f"{first.setup_intent_id}_secret_")
    assert first.setup_intent_id != second.setup_intent_id
    assert localstripe.request("GET", f"/v1/customers/{customer.customer_id}")["email"] == owner.email
    assert customer.has_card is False


def test_set_default_card_remembers_brand_and_last4(localstripe):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    customer = StripeCustomer.objects.get(organization=org)
    assert (customer.card_brand, customer.card_last4) == ("visa", "4242")
    assert customer.default_payment_method_id.startswith("pm_")
    assert [c.last4 for c in cards_list(organization_id=org.pk)] == ["4242"]


def test_card_declined_at_attach_is_not_kept_and_cannot_buy(localstripe, pack100):
    # given the 0002 card, which Stripe declines when it is attached
    org, _ = org_with_owner()
    pm = localstripe.payment_method_create(CARD_DECLINED_ON_ATTACH)
    with pytest.raises(gw.CardDeclinedError) as caught:
        card_set_default(organization_id=org.pk, payment_method_id=pm, now=T0)
    assert caught.value.message == "Your card was declined."
    # then no card is on file, and buying asks for one: no purchase, no credits
    assert StripeCustomer.objects.get(organization=org).has_card is False
    assert cards_list(organization_id=org.pk) == []
    with pytest.raises(Conflict) as no_card:
        purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0)
    assert (no_card.value.code, no_card.value.message) == ("card_required", "Add a card before buying credits.")
    assert CreditPurchase.objects.count() == 0
    assert_nothing_granted(org)


def test_remove_the_default_card(localstripe):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    pm = StripeCustomer.objects.get(organization=org).default_payment_method_id
    customer = card_remove(organization_id=org.pk, payment_method_id=pm, now=T0)
    assert (customer.default_payment_method_id, customer.card_last4, customer.has_card) == ("", "", False)
    assert cards_list(organization_id=org.pk) == []


def test_another_organizations_card_cannot_be_used_or_removed(localstripe):
    org_a, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    org_b, _ = org_with_owner()
    pm_a = StripeCustomer.objects.get(organization=org_a).default_payment_method_id
    with pytest.raises(NotFound):
        card_set_default(organization_id=org_b.pk, payment_method_id=pm_a, now=T0)
    with pytest.raises(NotFound):
        card_remove(organization_id=org_b.pk, payment_method_id=pm_a, now=T0)
    assert [c.id for c in cards_list(organization_id=org_a.pk)] == [pm_a]


# Buying a pack: the four test cards -------------------------------------------------------------


def test_4242_succeeds_and_grants_the_pack_at_once(localstripe, pack100):
    org, owner = org_with_card(localstripe, CARD_SUCCEEDS)
    # when the owner buys the 100-credit pack
    result = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0, actor_id=owner.pk)
    # then it is paid, with the lot granted in the same call
    purchase = result.purchase
    assert result.client_secret is None
    assert (purchase.status, purchase.amount, purchase.currency, purchase.credits) == (
        "succeeded",
        1000,
        "usd",
        Decimal(100),
    )
    assert (purchase.card_brand, purchase.card_last4, purchase.kind) == ("visa", "4242", "purchase")
    assert purchase.lot is not None
    assert (purchase.actor_id, purchase.lot.actor_id) == (owner.pk, owner.pk)
    assert_paid_once(org, purchase)
    # and Stripe charged once, with our idempotency key's purchase in the metadata
    intent = localstripe.payment_intent(purchase.payment_intent_id)
    assert (intent["status"], intent["amount"], intent["metadata"]) == (
        "succeeded",
        1000,
        {"purchase_id": str(purchase.pk), "organization_id": str(org.pk), "kind": "purchase"},
    )


def test_0341_attaches_then_declines_with_no_credits(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_DECLINED_ON_CHARGE)
    result = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0)
    purchase = reload(result.purchase)
    assert (purchase.status, purchase.failure_code, purchase.failure_message) == (
        "failed",
        "card_declined",
        "Your card was declined.",
    )
    assert (purchase.card_last4, purchase.lot, purchase.paid_at) == ("0341", None, None)
    assert_nothing_granted(org)


def test_3155_requires_action_then_the_sweep_grants_after_authentication(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_REQUIRES_ACTION)
    # when the pack is bought with a card that needs 3-D Secure
    result = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0)
    # then the browser gets the client secret, and nothing is granted yet
    purchase = reload(result.purchase)
    assert purchase.status == "requires_action"
    assert result.client_secret == localstripe.payment_intent(purchase.payment_intent_id)["client_secret"]
    assert_nothing_granted(org)
    # and a sweep before authentication changes nothing
    assert purchases_reconcile(now=LATER) == 1
    assert reload(purchase).status == "requires_action"
    # when the customer completes authentication (and the webhook is lost)
    localstripe.payment_intent_authenticate(purchase.payment_intent_id)
    # then the next sweep grants, once
    assert purchases_reconcile(now=LATER + timedelta(minutes=10)) == 1
    assert purchases_reconcile(now=LATER + timedelta(minutes=20)) == 0
    assert_paid_once(org, purchase, now=LATER + timedelta(minutes=10))


def test_3155_failed_authentication_fails_the_purchase(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_REQUIRES_ACTION)
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    localstripe.payment_intent_authenticate(purchase.payment_intent_id, success=False)
    purchases_reconcile(now=LATER)
    purchase = reload(purchase)
    assert (purchase.status, purchase.failure_code, purchase.failure_message) == (
        "failed",
        "payment_intent_authentication_failure",
        "Your bank did not confirm this payment.",
    )
    assert_nothing_granted(org)


def test_unknown_or_inactive_pack(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    pack("old", credits="5").__class__.objects.filter(key="old").update(is_active=False)
    for key in ("nope", "old"):
        with pytest.raises(NotFound) as caught:
            purchase_start(organization_id=org.pk, pack_key=key, now=T0)
        assert caught.value.code == "pack_not_found"
    assert CreditPurchase.objects.count() == 0


# One grant per payment ----------------------------------------------------------------------------


def test_settling_the_same_success_again_grants_nothing_more(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    intent = gw.payment_intent_retrieve(payment_intent=intent_id(purchase))
    # when the same success arrives twice more (webhook, sweep) and the sweep runs twice
    purchase_settle(intent=intent, now=LATER)
    purchase_settle(intent=intent, now=LATER)
    purchases_reconcile(now=LATER)
    purchases_reconcile(now=LATER)
    # then still one lot, one grant, paid at the first
    assert_paid_once(org, purchase)


def test_a_late_failure_never_undoes_a_success(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    stale = gw.Intent(
        id=intent_id(purchase),
        status="requires_payment_method",
        amount=1000,
        currency="usd",
        error_code="card_declined",
        error_message="declined",
    )
    purchase_settle(intent=stale, now=LATER)
    assert_paid_once(org, purchase)


def test_a_success_after_a_failure_still_grants(localstripe, pack100):
    # given a purchase that failed (3-D Secure not completed)
    org, _ = org_with_card(localstripe, CARD_REQUIRES_ACTION)
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    failed = gw.Intent(id=intent_id(purchase), status="requires_payment_method", amount=1000, currency="usd")
    assert reload(purchase_settle(intent=failed, now=T0)).status == "failed"
    # when Stripe then reports it paid (the customer retried in the browser)
    localstripe.payment_intent_authenticate(purchase.payment_intent_id)
    purchase_settle(intent=gw.payment_intent_retrieve(payment_intent=intent_id(purchase)), now=T0)
    # then the credits are granted once
    assert_paid_once(org, purchase)
    assert reload(purchase).failure_code == ""


def test_a_payment_for_another_amount_grants_nothing(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_REQUIRES_ACTION)
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    odd = gw.Intent(id=intent_id(purchase), status="succeeded", amount=1, currency="usd")
    settled = reload(purchase_settle(intent=odd, now=T0))
    assert (settled.status, settled.failure_code) == ("requires_action", "amount_mismatch")
    assert_nothing_granted(org)


def test_an_intent_that_is_not_ours_is_ignored(db):
    stranger = gw.Intent(id="pi_stranger", status="succeeded", amount=1000, currency="usd", metadata={"x": "1"})
    assert purchase_settle(intent=stranger, now=T0) is None


# Reconciliation -------------------------------------------------------------------------------


def _crashed_purchase(localstripe, number=CARD_SUCCEEDS):
    """A purchase whose charge went through in Stripe but whose answer we never wrote (a crash)."""
    org, _ = org_with_card(localstripe, number)
    customer = StripeCustomer.objects.get(organization=org)
    purchase = CreditPurchase.objects.create(
        organization=org,
        pack=pack(),
        credits=Decimal(100),
        amount=1000,
        currency="usd",
        payment_method_id=customer.default_payment_method_id,
        created_at=T0,
        updated_at=T0,
    )
    gw.payment_intent_create_and_confirm_off_session(
        amount=1000,
        currency="usd",
        customer=customer.customer_id,
        payment_method=customer.default_payment_method_id,
        idempotency_key=purchase.idempotency_key,
        metadata={"purchase_id": str(purchase.pk), "organization_id": str(org.pk), "kind": "purchase"},
    )
    return org, purchase


def test_sweep_finds_a_payment_we_never_recorded_by_its_metadata(localstripe):
    org, purchase = _crashed_purchase(localstripe)
    # a sweep too early leaves it alone
    assert purchases_reconcile(now=T0 + timedelta(minutes=1)) == 0
    assert reload(purchase).status == "pending"
    # when the sweep runs after five minutes, twice
    assert purchases_reconcile(now=LATER) == 1
    assert purchases_reconcile(now=LATER) == 0
    # then the payment is found, recorded and granted once
    assert reload(purchase).payment_intent_id == localstripe.request("GET", "/v1/payment_intents")["data"][0]["id"]
    assert_paid_once(org, purchase, now=LATER)


def test_sweep_gives_up_on_a_payment_stripe_never_saw(localstripe):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    purchase = CreditPurchase.objects.create(
        organization=org,
        pack=pack(),
        credits=Decimal(100),
        amount=1000,
        currency="usd",
        payment_method_id="pm_x",
        created_at=T0,
        updated_at=T0,
    )
    purchases_reconcile(now=LATER)
    assert reload(purchase).status == "pending"
    purchases_reconcile(now=T0 + timedelta(hours=2))
    purchase = reload(purchase)
    assert (purchase.status, purchase.failure_code, purchase.failure_message) == (
        "failed",
        "payment_not_found",
        "The payment did not go through. You were not charged.",
    )
    assert_nothing_granted(org)


def test_stripe_unreachable_leaves_the_purchase_pending_for_the_sweep(localstripe, pack100, settings):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    settings.STRIPE_API_HOST = "http://127.0.0.1:9"
    with pytest.raises(gw.PaymentProviderError):
        purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0)
    purchase = CreditPurchase.objects.get()
    assert purchase.status == "pending"
    assert ledger(org) == []
    # while Stripe is still down, the sweep keeps it pending
    purchases_reconcile(now=T0 + timedelta(hours=2))
    assert reload(purchase).status == "pending"
    assert balance(org) == 0


# Refunds: the unused part comes back out of the ledger ---------------------------------------------


def test_full_refund_of_an_unused_pack_takes_back_every_credit(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    # when the admin refunds it all
    taken = purchase_refund(purchase_id=purchase.pk, now=LATER)
    # then Stripe refunded 1000, the lot is emptied by one CLAWBACK entry keyed by the refund, and it reads refunded
    refund_id = localstripe.request("GET", "/v1/refunds")["data"][0]["id"]
    pi = intent_id(purchase)
    assert taken == Decimal(100)
    assert reload(purchase).status == "refunded"
    assert [c["amount_refunded"] for c in localstripe.charges()] == [1000]
    assert ledger(org) == [
        ("grant", Decimal(100), Decimal(100), f"grant:{pi}"),
        ("clawback", Decimal(-100), Decimal(0), f"refund:{refund_id}"),
    ]
    assert balance(org) == 0
    assert_ledger_consistent(org.pk)


def test_partial_refund_takes_back_at_most_what_is_unused(localstripe, pack100):
    # given a paid pack of which 80 credits were used
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    credits_adjust(organization_id=org.pk, credits=Decimal(-80), reason="used", actor_id=None, now=T0)
    # when half the money is refunded (50 credits' worth), twice as the same refund
    taken = purchase_refund(purchase_id=purchase.pk, amount=500, now=LATER)
    refund = localstripe.request("GET", "/v1/refunds")["data"][0]
    again = purchase_refund_record(
        payment_intent_id=intent_id(purchase),
        refund_id=refund["id"],
        refund_amount=500,
        fully_refunded=False,
        now=LATER,
    )
    # then only the 20 unused credits come back, once; the purchase stays paid
    assert (taken, again) == (Decimal(20), Decimal(0))
    assert reload(purchase).status == "succeeded"
    assert [e[0:3] for e in ledger(org)] == [
        ("grant", Decimal(100), Decimal(100)),
        ("adjust", Decimal(-80), Decimal(20)),
        ("clawback", Decimal(-20), Decimal(0)),
    ]
    assert_ledger_consistent(org.pk)


def test_refund_in_a_zero_decimal_currency_is_pro_rata(localstripe):
    pack("yen", credits="300", price=3000, currency="jpy")
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    purchase = purchase_start(organization_id=org.pk, pack_key="yen", now=T0).purchase
    assert (reload(purchase).status, reload(purchase).amount) == ("succeeded", 3000)
    # 1000 yen of 3000 back: a third of the credits
    assert purchase_refund(purchase_id=purchase.pk, amount=1000, now=LATER) == Decimal(100)
    assert balance(org) == Decimal(200)
    assert_ledger_consistent(org.pk)


def test_only_paid_purchases_can_be_refunded(localstripe, pack100):
    org, _ = org_with_card(localstripe, CARD_DECLINED_ON_CHARGE)
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    with pytest.raises(Conflict):
        purchase_refund(purchase_id=purchase.pk, now=LATER)
    assert localstripe.request("GET", "/v1/refunds")["data"] == []
