from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.db.models import QuerySet

from billing import stripe_gateway as gateway
from billing.models import (
    DRAW_ORDER,
    PLAN_KINDS,
    CreditAccount,
    CreditLot,
    CreditPack,
    CreditPurchase,
    LedgerEntry,
    PurchaseKind,
    PurchaseStatus,
    StripeCustomer,
)
from billing.pricing import format_money, pack_rate_pack, price_at_pack_rate
from core.errors import Conflict, NotFound
from core.money import ZERO, format_decimal
from plans.selectors import subscription_for


def credit_account(*, organization_id: int) -> CreditAccount | None:
    return CreditAccount.objects.filter(organization_id=organization_id).first()


def lots_open(*, organization_id: int, now: datetime) -> QuerySet[CreditLot]:
    """Lots with credits left that have not expired, in draw order."""
    return (
        CreditLot.objects.filter(organization_id=organization_id, is_open=True)
        .exclude(expires_at__lte=now)
        .order_by(*DRAW_ORDER)
    )


def ledger_entries(*, organization_id: int) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(organization_id=organization_id).select_related("lot").order_by("-id")


def packs_active() -> QuerySet[CreditPack]:
    return CreditPack.objects.filter(is_active=True)


def packs_for_sale(*, currency: str) -> QuerySet[CreditPack]:
    """The active packs a customer billed in `currency` may buy (billing_currency): only that currency's."""
    return packs_active().filter(currency__iexact=currency)


def pack_rate(*, currency: str) -> CreditPack | None:
    """The pack whose price per credit prices (and whose expiry dates) auto top-ups in `currency`."""
    return pack_rate_pack(currency)


def card_on_file(*, organization_id: int) -> StripeCustomer | None:
    """The organization's Stripe customer when it has a default card (what purchases charge), else None."""
    customer = StripeCustomer.objects.filter(organization_id=organization_id).first()
    return customer if customer is not None and customer.has_card else None


def cards_with_default(*, organization_id: int) -> tuple[list[gateway.Card], str]:
    """The cards on file (as Stripe has them) and the id of the default one ("" when none)."""
    customer = StripeCustomer.objects.filter(organization_id=organization_id).first()
    if customer is None:
        return [], ""
    return gateway.payment_method_list(customer=customer.customer_id), customer.default_payment_method_id


def cards_list(*, organization_id: int) -> list[gateway.Card]:
    return cards_with_default(organization_id=organization_id)[0]


def billing_currency(*, organization_id: int) -> str:
    """The currency the organization is billed in: its plan's, "usd" without a subscription."""
    subscription = subscription_for(organization_id=organization_id)
    return subscription.plan.currency if subscription is not None else "usd"


def auto_topup_currency(
    *, organization_id: int, account: CreditAccount | None, known_billing_currency: str | None = None
) -> str:
    """The currency auto top-up charges in: the one saved with its settings, else the billing currency.
    `account`: the organization's credit account, as the caller read it (None: it has none).
    `known_billing_currency`: billing_currency's answer, when the caller has read it already."""
    if account is not None and account.auto_topup_currency:
        return account.auto_topup_currency
    return known_billing_currency or billing_currency(organization_id=organization_id)


class AutoTopUpQuote(NamedTuple):
    """What one top-up from the minimum to the target buys and charges, at the pack rate."""

    credits: Decimal
    amount: int  # minor units
    currency: str


class AutoTopUpTerms(NamedTuple):
    currency: str  # the one saved with the settings, else the billing currency
    pack: CreditPack | None  # the pack rate in that currency (it prices a top-up and dates its expiry)
    quote: AutoTopUpQuote | None  # None until a minimum and a target are set, or when no pack is sold


def auto_topup_terms(
    *, organization_id: int, account: CreditAccount | None, known_billing_currency: str | None = None
) -> AutoTopUpTerms:
    """Auto top-up's currency, pack rate and quote; the arguments as for auto_topup_currency."""
    currency = auto_topup_currency(
        organization_id=organization_id, account=account, known_billing_currency=known_billing_currency
    )
    pack = pack_rate(currency=currency)
    quote = None
    if pack is not None and account is not None and account.auto_topup_target_balance > account.auto_topup_min_balance:
        credits = account.auto_topup_target_balance - max(account.auto_topup_min_balance, ZERO)
        quote = AutoTopUpQuote(credits, price_at_pack_rate(credits, pack), currency)
    return AutoTopUpTerms(currency, pack, quote)


def auto_topup_quote(*, organization_id: int) -> AutoTopUpQuote | None:
    """What a top-up from the minimum would buy and charge now."""
    account = credit_account(organization_id=organization_id)
    return auto_topup_terms(organization_id=organization_id, account=account).quote


def plan_upgrade_waiting(*, organization_id: int) -> CreditPurchase | None:
    """The organization's plan upgrade whose payment waits for the bank (3-D Secure), if any
    (at most one plan payment is in flight)."""
    return (
        CreditPurchase.objects.select_related("plan")
        .filter(
            organization_id=organization_id,
            kind=PurchaseKind.PLAN_UPGRADE,
            status=PurchaseStatus.REQUIRES_ACTION,
            payment_intent_id__isnull=False,
        )
        .order_by("-id")
        .first()
    )


def purchase_authentication_secret(
    *, organization_id: int, purchase_id: int, kind: PurchaseKind = PurchaseKind.PURCHASE
) -> str:
    """The client secret Stripe.js's confirmCardPayment needs to run 3-D Secure in the browser, for a
    purchase of this organization (of `kind`) that waits for it. Outside any transaction (network)."""
    purchase = CreditPurchase.objects.filter(pk=purchase_id, organization_id=organization_id, kind=kind).first()
    if purchase is None:
        raise NotFound("There is no such purchase.", code="purchase_not_found")
    not_waiting = Conflict("This payment does not wait for your bank.", code="purchase_not_awaiting_authentication")
    if purchase.status != PurchaseStatus.REQUIRES_ACTION or not purchase.payment_intent_id:
        raise not_waiting
    intent = gateway.payment_intent_retrieve(payment_intent=purchase.payment_intent_id)
    if intent.status != "requires_action" or not intent.client_secret:
        raise not_waiting
    return intent.client_secret


RECEIPT_STATUSES = (PurchaseStatus.SUCCEEDED, PurchaseStatus.REFUNDED)


def receipts_for(*, organization_id: int, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
    """The organization's receipts (paid purchases, top-ups, renewals and upgrades), newest first.

    `before`: only receipts with an id below it (the previous page's last id).
    """
    qs = (
        CreditPurchase.objects.filter(organization_id=organization_id, status__in=RECEIPT_STATUSES)
        .select_related("pack", "plan")
        .order_by("-id")
    )
    if before is not None:
        qs = qs.filter(pk__lt=before)
    return [receipt_dict(purchase) for purchase in qs[:limit]]


def receipt_dict(purchase: CreditPurchase) -> dict[str, Any]:
    """What a receipt shows: what was bought, the money (minor units and as a decimal string in
    major units), the card, the credits granted (none for a plan period), and when it was paid."""
    is_plan = purchase.kind in PLAN_KINDS
    return {
        "id": purchase.pk,
        "number": f"{purchase.organization_id}-{purchase.pk:06d}",
        "kind": purchase.kind,
        "description": _receipt_description(purchase),
        "status": purchase.status,
        "amount": purchase.amount,
        "amount_decimal": format_money(purchase.amount, purchase.currency),
        "currency": purchase.currency,
        "card_brand": purchase.card_brand,
        "card_last4": purchase.card_last4,
        "credits_granted": None if is_plan else format_decimal(purchase.credits),
        "plan": purchase.plan.key if is_plan and purchase.plan is not None else None,
        "period_start": purchase.period_start.isoformat() if is_plan and purchase.period_start else None,
        "period_end": purchase.period_end.isoformat() if is_plan and purchase.period_end else None,
        "paid_at": purchase.paid_at.isoformat() if purchase.paid_at else None,
    }


def _receipt_description(purchase: CreditPurchase) -> str:
    if purchase.kind in PLAN_KINDS and purchase.plan is not None:
        verb = "renewal" if purchase.kind == PurchaseKind.RENEWAL else "subscription"
        return f"{purchase.plan.name} plan {verb}"
    if purchase.kind == PurchaseKind.AUTO_TOPUP:
        return f"Auto top-up: {format_decimal(purchase.credits)} credits"
    if purchase.pack is not None:
        return purchase.pack.name
    return f"{format_decimal(purchase.credits)} credits"
