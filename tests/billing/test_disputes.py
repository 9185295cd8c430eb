"""charge.dispute.* webhooks (signed payloads posted to dj-stripe's endpoint: localstripe sends no
dispute events): a dispute takes back the unused credits once, a won one gives them back once."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from djstripe.models import Event, WebhookEventTrigger

from billing.models import CreditLot
from billing.services.disputes import purchase_dispute_close, purchase_dispute_record
from billing.services.grants import credits_grant
from billing.services.purchases import purchase_start
from tests.billing.payment_support import balance, ledger, lots, org_with_card, pack, reload
from tests.billing.stripe_fixtures import CARD_SUCCEEDS
from tests.billing.test_webhooks import post_event
from tests.factories import T0
from tests.invariants import assert_ledger_consistent

pytestmark = pytest.mark.django_db

DISPUTE_EVENTS = [
    "charge.dispute.created",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.closed",
    "charge.dispute.funds_reinstated",
    "charge.dispute.updated",
]


@pytest.fixture(autouse=True)
def _without_djstripe_dispute_sync():
    """dj-stripe's own receiver re-reads the dispute from the API (GET /v1/disputes/<id>), which
    localstripe does not have (404: the event would fail). With Stripe it runs before ours."""
    from djstripe.event_handlers import handle_charge_dispute_event
    from djstripe.models import Event
    from djstripe.signals import WEBHOOK_SIGNALS

    for name in DISPUTE_EVENTS:
        WEBHOOK_SIGNALS[name].disconnect(handle_charge_dispute_event, sender=Event)
    yield
    for name in DISPUTE_EVENTS:
        WEBHOOK_SIGNALS[name].connect(handle_charge_dispute_event, sender=Event)


def paid_purchase(localstripe):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    pack()
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    assert reload(purchase).status == "succeeded"
    return org, reload(purchase)


def dispute(purchase, *, status="needs_response", amount=1000, with_intent=True, dispute_id=None):
    charge = purchase.payment_intent_id.replace("pi_", "ch_")
    obj = {
        "id": dispute_id or f"dp_{uuid.uuid4().hex[:20]}",
        "object": "dispute",
        "amount": amount,
        "currency": "usd",
        "charge": charge,
        "reason": "fraudulent",
        "status": status,
        "livemode": False,
        "created": 1_700_000_000,
        "metadata": {},
    }
    if with_intent:
        obj["payment_intent"] = purchase.payment_intent_id
    return obj


def spend(org, credits: str) -> None:
    """Use some of the credits (an admin removal draws like usage)."""
    from billing.services.grants import credits_adjust

    credits_adjust(organization_id=org.pk, credits=-Decimal(credits), reason="used", actor_id=None, now=T0)


class TestDisputeWebhooks:
    def test_dispute_created_takes_back_the_unused_credits_once(self, client, localstripe, djstripe_endpoint):
        # given a paid 100-credit pack of which 30 are used
        org, purchase = paid_purchase(localstripe)
        spend(org, "30")
        opened = dispute(purchase)
        # when charge.dispute.created arrives, again (same event), then funds_withdrawn for the same dispute
        first, event_id = post_event(client, djstripe_endpoint, "charge.dispute.created", opened)
        again, _ = post_event(client, djstripe_endpoint, "charge.dispute.created", opened, event_id=event_id)
        withdrawn, _ = post_event(client, djstripe_endpoint, "charge.dispute.funds_withdrawn", opened)
        # then all are acknowledged and processed, and the 70 unused credits are taken back once
        assert [first.status_code, again.status_code, withdrawn.status_code] == [200, 200, 200]
        assert Event.objects.filter(type__startswith="charge.dispute").count() == 2
        assert list(WebhookEventTrigger.objects.values_list("valid", "processed", "exception")) == [
            (True, True, ""),
            (True, True, ""),
            (True, True, ""),
        ]
        assert ledger(org)[2:] == [("clawback", Decimal(-70), Decimal(0), f"dispute:{opened['id']}")]
        assert balance(org) == Decimal(0)
        assert reload(purchase).status == "succeeded"
        assert_ledger_consistent(org.pk)

    def test_won_dispute_restores_what_was_taken_once(self, client, localstripe, djstripe_endpoint):
        org, purchase = paid_purchase(localstripe)
        spend(org, "30")
        opened = dispute(purchase)
        post_event(client, djstripe_endpoint, "charge.dispute.created", opened)
        # when the dispute closes won, delivered twice, plus funds_reinstated
        won = dict(opened, status="won")
        a, _ = post_event(client, djstripe_endpoint, "charge.dispute.closed", won)
        b, _ = post_event(client, djstripe_endpoint, "charge.dispute.closed", won)
        c, _ = post_event(client, djstripe_endpoint, "charge.dispute.funds_reinstated", won)
        # then the 70 credits come back once, as a paid lot expiring with the original
        assert [a.status_code, b.status_code, c.status_code] == [200, 200, 200]
        restored = CreditLot.objects.get(external_ref=f"dispute-won:{opened['id']}")
        assert (restored.category, restored.source, restored.granted, restored.expires_at) == (
            "paid",
            "adjustment",
            Decimal(70),
            T0 + timedelta(days=365),  # the pack's lot's expiry
        )
        assert [(kind, amount, ref) for kind, amount, _, ref in ledger(org)][2:] == [
            ("clawback", Decimal(-70), f"dispute:{opened['id']}"),
            ("grant", Decimal(70), f"grant:dispute-won:{opened['id']}"),
        ]
        assert balance(org) == Decimal(70)
        assert_ledger_consistent(org.pk)

    def test_lost_dispute_keeps_the_credits_taken(self, client, localstripe, djstripe_endpoint):
        org, purchase = paid_purchase(localstripe)
        opened = dispute(purchase, amount=500)  # half the payment disputed: half the credits
        post_event(client, djstripe_endpoint, "charge.dispute.created", opened)
        response, _ = post_event(client, djstripe_endpoint, "charge.dispute.closed", dict(opened, status="lost"))
        assert response.status_code == 200
        assert [(kind, amount) for kind, amount, _, _ in ledger(org)] == [
            ("grant", Decimal(100)),
            ("clawback", Decimal(-50)),
        ]
        assert balance(org) == Decimal(50)
        assert CreditLot.objects.filter(external_ref__startswith="dispute-won:").count() == 0
        assert_ledger_consistent(org.pk)

    def test_dispute_without_payment_intent_is_matched_through_its_charge(self, client, localstripe, djstripe_endpoint):
        # given a dispute object of an older API version: only the charge id
        org, purchase = paid_purchase(localstripe)
        charge = localstripe.charges()[0]
        opened = dict(dispute(purchase, with_intent=False), charge=charge["id"])
        response, _ = post_event(client, djstripe_endpoint, "charge.dispute.created", opened)
        assert response.status_code == 200
        assert ledger(org)[1:] == [("clawback", Decimal(-100), Decimal(0), f"dispute:{opened['id']}")]
        assert_ledger_consistent(org.pk)

    def test_disputes_of_payments_that_are_not_ours_are_acknowledged(self, client, localstripe, djstripe_endpoint):
        org, purchase = paid_purchase(localstripe)
        other = dict(dispute(purchase), payment_intent="pi_not_ours_0000000000")
        created, _ = post_event(client, djstripe_endpoint, "charge.dispute.created", other)
        closed, _ = post_event(client, djstripe_endpoint, "charge.dispute.closed", dict(other, status="won"))
        assert [created.status_code, closed.status_code] == [200, 200]
        assert ledger(org) == [("grant", Decimal(100), Decimal(100), f"grant:{purchase.payment_intent_id}")]
        assert_ledger_consistent(org.pk)


class TestDisputeService:
    def test_two_disputes_of_one_payment_each_take_their_share(self, localstripe):
        org, purchase = paid_purchase(localstripe)
        pi = purchase.payment_intent_id

        def record(dispute_id: str):
            return purchase_dispute_record(payment_intent_id=pi, dispute_id=dispute_id, dispute_amount=300, now=T0)

        assert [record("dp_a"), record("dp_a"), record("dp_b")] == [Decimal(30), Decimal(0), Decimal(30)]
        assert balance(org) == Decimal(40)
        assert_ledger_consistent(org.pk)

    def test_a_used_up_lot_has_nothing_to_take_and_a_win_restores_nothing(self, localstripe):
        org, purchase = paid_purchase(localstripe)
        spend(org, "100")
        pi = purchase.payment_intent_id
        assert purchase_dispute_record(payment_intent_id=pi, dispute_id="dp_c", dispute_amount=1000, now=T0) == 0
        assert purchase_dispute_close(dispute_id="dp_c", status="won", now=T0) is None
        assert [kind for kind, *_ in ledger(org)] == ["grant", "adjust"]
        assert_ledger_consistent(org.pk)

    def test_an_inquiry_closed_without_chargeback_restores(self, localstripe):
        org, purchase = paid_purchase(localstripe)
        pi = purchase.payment_intent_id
        purchase_dispute_record(payment_intent_id=pi, dispute_id="dp_d", dispute_amount=1000, now=T0)
        lot = purchase_dispute_close(dispute_id="dp_d", status="warning_closed", now=T0 + timedelta(days=1))
        assert lot is not None and lot.granted == Decimal(100)
        assert balance(org) == Decimal(100)
        assert_ledger_consistent(org.pk)

    def test_a_win_after_the_lot_expired_restores_nothing(self, localstripe):
        org, purchase = paid_purchase(localstripe)
        pi = purchase.payment_intent_id
        purchase_dispute_record(payment_intent_id=pi, dispute_id="dp_e", dispute_amount=1000, now=T0)
        assert purchase_dispute_close(dispute_id="dp_e", status="won", now=T0 + timedelta(days=400)) is None
        assert lots(org) == [("paid", "purchase", Decimal(100), Decimal(0), pi)]
        assert_ledger_consistent(org.pk)

    def test_a_grant_lot_is_not_a_purchase(self, localstripe):
        org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
        credits_grant(organization_id=org.pk, credits=Decimal(10), now=T0, external_ref="pi_granted")
        assert (
            purchase_dispute_record(payment_intent_id="pi_granted", dispute_id="dp_f", dispute_amount=1, now=T0) is None
        )
