"""Receipts: every paid purchase, top-up, upgrade and renewal, with the money, the card and the
credits; nothing for failed or pending payments, nothing of another organization."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.models import CreditPurchase
from billing.selectors import receipts_for
from billing.services import credits_adjust
from billing.services.autotopup import auto_topup_configure, auto_topup_run
from billing.services.purchases import purchase_refund, purchase_start
from billing.services.renewals import renewals_run_due, subscription_upgrade
from plans.models import Plan, Subscription
from tests.billing.payment_support import org_with_card, pack
from tests.billing.stripe_fixtures import CARD_DECLINED_ON_CHARGE, CARD_SUCCEEDS
from tests.factories import T0

pytestmark = pytest.mark.django_db

P1 = datetime(2026, 2, 15, 12, 0, tzinfo=UTC)
P2 = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def test_receipts_of_every_kind_newest_first(localstripe):
    pack()
    pack("yen", credits="300", price=3000, currency="jpy")
    Plan.objects.create(key="free", name="Free", price_amount=0, is_default=True)
    Plan.objects.create(key="pro", name="Pro", price_amount=2000)
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    Subscription.objects.filter(organization=org).update(plan=Plan.objects.get(key="free"))
    # given a pack in dollars, a pack in yen, an auto top-up, an upgrade and its renewal
    dollars = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    yen = purchase_start(organization_id=org.pk, pack_key="yen", now=T0 + timedelta(minutes=1)).purchase
    auto_topup_configure(
        organization_id=org.pk,
        enabled=True,
        min_balance=Decimal(500),
        target_balance=Decimal(600),
        monthly_cap=5000,
        now=T0,
        currency="usd",
    )
    credits_adjust(organization_id=org.pk, credits=Decimal("-0.5"), reason="used", actor_id=None, now=T0)
    topup = auto_topup_run(organization_id=org.pk, now=T0 + timedelta(minutes=2)).purchase
    upgrade = subscription_upgrade(organization_id=org.pk, plan_key="pro", now=T0 + timedelta(minutes=3)).purchase
    renewals_run_due(now=P1 + timedelta(minutes=3))
    renewal = CreditPurchase.objects.get(organization=org, kind="renewal")
    # and a failed and a pending purchase, and another organization whose purchase failed
    for status in ("failed", "pending"):
        CreditPurchase.objects.create(
            organization=org,
            credits=Decimal(1),
            amount=100,
            currency="usd",
            status=status,
            created_at=T0,
            updated_at=T0,
        )
    other, _ = org_with_card(localstripe, CARD_DECLINED_ON_CHARGE)
    assert purchase_start(organization_id=other.pk, pack_key="pack-100", now=T0).purchase.status == "failed"
    assert topup is not None

    receipts = receipts_for(organization_id=org.pk)

    assert [r["id"] for r in receipts] == [renewal.pk, upgrade.pk, topup.pk, yen.pk, dollars.pk]
    assert receipts[0] == {
        "id": renewal.pk,
        "number": f"{org.pk}-{renewal.pk:06d}",
        "kind": "renewal",
        "description": "Pro plan renewal",
        "status": "succeeded",
        "amount": 2000,
        "amount_decimal": "20.00",
        "currency": "usd",
        "card_brand": "visa",
        "card_last4": "4242",
        "credits_granted": None,
        "plan": "pro",
        "period_start": (P1 + timedelta(minutes=3)).isoformat(),
        "period_end": (P2 + timedelta(minutes=3)).isoformat(),
        "paid_at": (P1 + timedelta(minutes=3)).isoformat(),
    }
    assert (receipts[1]["description"], receipts[1]["period_start"], receipts[1]["period_end"]) == (
        "Pro plan subscription",
        (T0 + timedelta(minutes=3)).isoformat(),
        (P1 + timedelta(minutes=3)).isoformat(),
    )
    # from 399.5 credits up to 600: 200.5 credits at 10 cents (the cheapest pack in dollars)
    assert {k: receipts[2][k] for k in ("description", "amount", "amount_decimal", "credits_granted", "plan")} == {
        "description": "Auto top-up: 200.5 credits",
        "amount": 2005,
        "amount_decimal": "20.05",
        "credits_granted": "200.5",
        "plan": None,
    }
    assert {k: receipts[3][k] for k in ("description", "amount", "amount_decimal", "currency", "credits_granted")} == {
        "description": "300 credits",
        "amount": 3000,
        "amount_decimal": "3000",
        "currency": "jpy",
        "credits_granted": "300",
    }
    assert (receipts[4]["paid_at"], receipts[4]["card_last4"]) == (T0.isoformat(), "4242")
    assert receipts_for(organization_id=other.pk) == []
    # paging: the two oldest
    assert [r["id"] for r in receipts_for(organization_id=org.pk, before=topup.pk)] == [yen.pk, dollars.pk]


def test_a_refunded_purchase_keeps_its_receipt_marked_refunded(localstripe):
    pack()
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    purchase_refund(purchase_id=purchase.pk, now=T0 + timedelta(hours=1))
    assert [(r["id"], r["status"], r["amount"]) for r in receipts_for(organization_id=org.pk)] == [
        (purchase.pk, "refunded", 1000)
    ]
