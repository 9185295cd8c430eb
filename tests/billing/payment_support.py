"""Builders shared by the payment tests (purchases, webhooks, reconciliation)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from billing.models import CreditLot, CreditPack, CreditPurchase, LedgerEntry
from billing.selectors import credit_account
from billing.services.purchases import card_set_default
from tests.factories import T0, PlanFactory, UserFactory, make_org
from tests.invariants import assert_ledger_consistent


def pack(
    key: str = "pack-100", *, credits: str = "100", price: int = 1000, currency: str = "usd", days: int | None = 365
):
    return CreditPack.objects.create(
        key=key,
        name=f"{credits} credits",
        credits=Decimal(credits),
        price_amount=price,
        currency=currency,
        expires_after_days=days,
    )


def org_with_owner():
    owner = UserFactory()
    return make_org(plan=PlanFactory(), owner=owner), owner


def org_with_card(localstripe, number: str):
    """An organization whose default card is `number` (as after Stripe.js confirmCardSetup)."""
    org, owner = org_with_owner()
    pm = localstripe.payment_method_create(number)
    card_set_default(organization_id=org.pk, payment_method_id=pm, now=T0)
    return org, owner


def balance(org) -> Decimal:
    account = credit_account(organization_id=org.pk)
    assert account is not None
    return account.balance


def ledger(org) -> list[tuple[str, Decimal, Decimal, str]]:
    return [
        (e.kind, e.amount, e.balance_after, e.reference)
        for e in LedgerEntry.objects.filter(organization_id=org.pk).order_by("id")
    ]


def lots(org) -> list[tuple[str, str, Decimal, Decimal, str | None]]:
    return [
        (lot.category, lot.source, lot.granted, lot.remaining, lot.external_ref)
        for lot in CreditLot.objects.filter(organization_id=org.pk).order_by("id")
    ]


def reload(purchase: CreditPurchase | None) -> CreditPurchase:
    assert purchase is not None
    return CreditPurchase.objects.get(pk=purchase.pk)


def paid_at(purchase: CreditPurchase) -> datetime:
    when = reload(purchase).paid_at
    assert when is not None
    return when


def intent_id(purchase: CreditPurchase) -> str:
    pi = reload(purchase).payment_intent_id
    assert pi is not None
    return pi


def assert_paid_once(org, purchase: CreditPurchase, *, credits: str = "100", now=T0) -> None:
    """The purchase is paid, with one paid lot and one GRANT entry for its payment intent."""
    purchase = reload(purchase)
    pi = purchase.payment_intent_id
    assert purchase.status == "succeeded"
    assert purchase.paid_at == now
    assert purchase.lot is not None and purchase.lot.external_ref == pi
    assert purchase.lot.expires_at == now + timedelta(days=365)
    assert lots(org) == [("paid", "purchase", Decimal(credits), Decimal(credits), pi)]
    assert ledger(org) == [("grant", Decimal(credits), Decimal(credits), f"grant:{pi}")]
    assert balance(org) == Decimal(credits)
    assert_ledger_consistent(org.pk)


def assert_nothing_granted(org) -> None:
    assert lots(org) == []
    assert ledger(org) == []
    assert balance(org) == Decimal(0)
    assert_ledger_consistent(org.pk)
