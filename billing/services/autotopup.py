"""Auto top-up: when a debit leaves the balance below the owner's minimum, buy just enough credits
to reach the target, at the pack rate (billing/pricing.py), with the card on file.

Safeguards (UX.md, "Buying and topping up"): off until an owner turns it on (buying a pack never
does); at most one in flight per organization (a partial unique constraint on CreditPurchase); a
cool-down between charge attempts (AUTO_TOPUP_COOLDOWN_SECONDS); a monthly cap on the money charged
(succeeded, refunded and in-flight top-ups of the calendar month, UTC); an email for every charge;
turned off after AUTO_TOPUP_MAX_FAILURES failures in a row, with an email.

How it runs: the usage engine enqueues `billing.tasks.auto_topup_run` on commit when a debit
crosses the minimum; a beat sweep (`auto_topup_due`) catches up whatever is still below it. Both
end in `auto_topup_run`, which decides under the credit account's lock and writes the purchase row,
then charges outside any transaction through the pack-purchase machinery (purchase_charge ->
purchase_settle), which calls `auto_topup_outcome_record` when the charge succeeds or fails,
whichever path (synchronous answer, webhook, reconciliation sweep) learns it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q, Sum

from billing import pricing
from billing.emails import card_params
from billing.models import (
    BillingNoticeKind,
    CreditAccount,
    CreditPack,
    CreditPurchase,
    PurchaseKind,
    PurchaseStatus,
    StripeCustomer,
)
from billing.selectors import billing_currency
from billing.services import purchases
from billing.services.book import credit_books_lock
from billing.services.notices import billing_notice_add
from billing.stripe_gateway import PaymentProviderError
from core.errors import Conflict, DomainError, NotFound
from core.money import format_decimal, round_credits
from plans.periods import month_start

logger = logging.getLogger(__name__)

AUTO_TOPUP_MAX_FAILURES = 3
DEFAULT_COOLDOWN_SECONDS = 600
# Purchases that count against the monthly cap: charged, or possibly about to be.
CAP_STATUSES = (
    PurchaseStatus.PENDING,
    PurchaseStatus.REQUIRES_ACTION,
    PurchaseStatus.SUCCEEDED,
    PurchaseStatus.REFUNDED,
)


def cooldown() -> timedelta:
    return timedelta(seconds=int(getattr(settings, "AUTO_TOPUP_COOLDOWN_SECONDS", DEFAULT_COOLDOWN_SECONDS)))


# Settings ----------------------------------------------------------------------------------------


def _account_locked(organization_id: int, now: datetime) -> CreditAccount:
    books = credit_books_lock([organization_id], now=now)
    if organization_id not in books:
        raise NotFound("There is no such organization.", code="organization_not_found")
    return books[organization_id].account


def auto_topup_configure(
    *,
    organization_id: int,
    enabled: bool,
    min_balance: Decimal,
    target_balance: Decimal,
    monthly_cap: int | None,
    now: datetime,
    currency: str | None = None,
) -> CreditAccount:
    """Turn auto top-up on (with its settings) or off. Only an owner's action should reach this.

    On: 0 <= min < target, a positive monthly cap (minor units) that covers at least one top-up from
    the minimum to the target, an active pack in the currency (the org's plan currency by default)
    to price it, and a card on file. Turning it on resets the failure count; if the balance is
    already below the minimum, a top-up is enqueued on commit ("buys at once").
    Off: keeps the settings, so turning it on again shows them.
    """
    min_balance, target_balance = round_credits(min_balance), round_credits(target_balance)
    currency = (currency or billing_currency(organization_id=organization_id)).lower()
    if enabled:
        _check_settings(organization_id, min_balance, target_balance, monthly_cap, currency)
    with transaction.atomic():
        account = _account_locked(organization_id, now)
        fields: dict[str, object] = {"auto_topup_enabled": enabled}
        if enabled:
            fields.update(
                auto_topup_min_balance=min_balance,
                auto_topup_target_balance=target_balance,
                auto_topup_monthly_cap_amount=monthly_cap,
                auto_topup_currency=currency,
                auto_topup_failures=0,
            )
        CreditAccount.objects.filter(pk=account.pk).update(**fields)
        account.refresh_from_db()
        if enabled and account.balance < account.auto_topup_min_balance:
            auto_topup_enqueue_on_commit(organization_id)
    return account


def _check_settings(
    organization_id: int, min_balance: Decimal, target_balance: Decimal, monthly_cap: int | None, currency: str
) -> None:
    if min_balance < 0:
        raise DomainError("The minimum balance cannot be negative.", code="validation_error", field="min_balance")
    if target_balance <= min_balance:
        raise DomainError(
            "The target balance must be more than the minimum balance.", code="validation_error", field="target_balance"
        )
    if monthly_cap is None or monthly_cap <= 0:
        raise DomainError("Set a monthly limit for automatic top-ups.", code="validation_error", field="monthly_cap")
    pack = pricing.pack_rate_pack(currency)
    if pack is None:
        raise DomainError(
            f"Credits are not sold in {currency.upper()}.",
            code="currency_not_sold",
            field="currency",
            currency=currency,
        )
    one = pricing.price_at_pack_rate(target_balance - min_balance, pack)
    if one < pricing.minimum_charge(currency):
        raise DomainError(
            "A top-up from the minimum to the target would charge less than our payment provider accepts: "
            "raise the target or lower the minimum.",
            code="validation_error",
            field="target_balance",
        )
    if monthly_cap < one:
        raise DomainError(
            f"The monthly limit must cover at least one top-up ({pricing.format_money(one, currency)} "
            f"{currency.upper()}).",
            code="validation_error",
            field="monthly_cap",
            minimum_amount=one,  # the page words it in the viewer's language
            currency=currency,
        )
    customer = StripeCustomer.objects.filter(organization_id=organization_id).first()
    if customer is None or not customer.has_card:
        raise Conflict("Add a card before turning on automatic top-up.", code="card_required")


def auto_topup_enqueue_on_commit(organization_id: int) -> None:
    """Run a top-up check after the current transaction commits (a broker error is logged, not raised:
    the beat sweep catches up)."""
    from billing.tasks import auto_topup_run as task  # tasks import this module

    transaction.on_commit(lambda: task.delay(organization_id), robust=True)


# Deciding and charging ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TopUp:
    """What `auto_topup_run` did: `reason` is "charged" (with the purchase) or why it did nothing."""

    reason: str
    purchase: CreditPurchase | None = None


def auto_topup_spent_this_month(*, organization_id: int, now: datetime, currency: str | None = None) -> int:
    """Minor units (of `currency`, if given) that count against the monthly cap now."""
    qs = CreditPurchase.objects.filter(
        organization_id=organization_id,
        kind=PurchaseKind.AUTO_TOPUP,
        status__in=CAP_STATUSES,
        created_at__gte=month_start(now),
    )
    if currency:
        qs = qs.filter(currency=currency.lower())
    return int(qs.aggregate(total=Sum("amount"))["total"] or 0)


def auto_topup_run(*, organization_id: int, now: datetime) -> TopUp:
    """Top up this organization if it needs it now; safe to call any number of times, concurrently.

    Decides under the credit account lock (enabled, below the minimum, nothing in flight, cool-down
    passed, within the monthly cap) and commits the purchase row, then charges it outside the
    transaction. Must not be called inside a transaction.
    """
    with transaction.atomic():
        books = credit_books_lock([organization_id], now=now)
        book = books.get(organization_id)
        if book is None:
            return TopUp("no_account")
        book.flush()  # lots that expired lazily count before we decide
        account = book.account
        decision = _decide(account, book.balance, now)
        if isinstance(decision, str):
            return TopUp(decision)
        credits, amount, pack, customer = decision
        CreditAccount.objects.filter(pk=account.pk).update(auto_topup_last_charge_at=now)
        if customer is None or not customer.has_card:
            _failed(account, now, reason="There is no card on file.", purchase=None)
            return TopUp("no_card")
        try:
            with transaction.atomic():
                purchase = CreditPurchase.objects.create(
                    organization_id=organization_id,
                    pack=pack,
                    kind=PurchaseKind.AUTO_TOPUP,
                    credits=credits,
                    amount=amount,
                    currency=pack.currency,
                    payment_method_id=customer.default_payment_method_id,
                    card_brand=customer.card_brand,
                    card_last4=customer.card_last4,
                    created_at=now,
                    updated_at=now,
                )
        except IntegrityError:  # one in flight: only possible if a writer skipped the account lock
            return TopUp("in_flight")
    try:
        result = purchases.purchase_charge(purchase=purchase, customer_id=customer.customer_id, now=now)
    except PaymentProviderError as exc:
        # Outcome unknown: the purchase stays pending (in flight) and the reconciliation sweep settles it.
        logger.warning("auto top-up purchase %s: %s", purchase.pk, exc.message)
        return TopUp("charged", purchase)
    return TopUp("charged", result.purchase)


def _decide(
    account: CreditAccount, balance: Decimal, now: datetime
) -> str | tuple[Decimal, int, CreditPack, StripeCustomer | None]:
    """Why not to top up now, or (credits, amount, pricing pack, customer). Caller holds the lock."""
    org_id = account.organization_id
    if not account.auto_topup_enabled:
        return "disabled"
    if balance >= account.auto_topup_min_balance:
        return "above_minimum"
    if CreditPurchase.objects.filter(
        organization_id=org_id, kind=PurchaseKind.AUTO_TOPUP, status__in=CreditPurchase.OPEN_STATUSES
    ).exists():
        return "in_flight"
    last = account.auto_topup_last_charge_at
    if last is not None and now < last + cooldown():
        return "cooling_down"
    pack = pricing.pack_rate_pack(account.auto_topup_currency)
    if pack is None:
        logger.error("auto top-up of organization %s: no active pack in %s", org_id, account.auto_topup_currency)
        return "no_pack"
    credits = round_credits(account.auto_topup_target_balance - balance)
    amount = pricing.price_at_pack_rate(credits, pack)
    cap = account.auto_topup_monthly_cap_amount or 0
    if auto_topup_spent_this_month(organization_id=org_id, now=now, currency=pack.currency) + amount > cap:
        return "monthly_cap_reached"
    customer = StripeCustomer.objects.filter(organization_id=org_id).first()
    return credits, amount, pack, customer


def auto_topup_outcome_record(*, purchase: CreditPurchase, now: datetime) -> None:
    """An auto top-up purchase just succeeded or failed (called by purchase_settle / purchase_fail,
    inside their transaction, with the purchase row locked): reset or count failures, and email."""
    with transaction.atomic():
        account = _account_locked(purchase.organization_id, now)
        if purchase.status == PurchaseStatus.SUCCEEDED:
            CreditAccount.objects.filter(pk=account.pk).update(auto_topup_failures=0)
            billing_notice_add(
                organization_id=purchase.organization_id,
                kind=BillingNoticeKind.TOPUP_SUCCEEDED,
                dedupe_key=f"purchase:{purchase.pk}:succeeded",
                params={
                    "credits": format_decimal(purchase.credits),
                    "amount": purchase.amount,
                    "currency": purchase.currency,
                    "min_balance": format_decimal(account.auto_topup_min_balance),
                    "cap_amount": account.auto_topup_monthly_cap_amount or 0,
                    **card_params(purchase),
                },
                now=now,
                purchase=purchase,
            )
        elif purchase.status == PurchaseStatus.FAILED:
            _failed(account, now, reason=purchase.failure_message or "Your card was declined.", purchase=purchase)


def _failed(account: CreditAccount, now: datetime, *, reason: str, purchase: CreditPurchase | None) -> None:
    """Count one failure in a row (caller holds the account lock); the third turns auto top-up off."""
    CreditAccount.objects.filter(pk=account.pk).update(auto_topup_failures=F("auto_topup_failures") + 1)
    account.refresh_from_db(fields=["auto_topup_failures", "auto_topup_enabled"])
    failures = account.auto_topup_failures
    org_id = account.organization_id
    key = f"purchase:{purchase.pk}" if purchase is not None else f"no_card:{now.isoformat()}"
    billing_notice_add(
        organization_id=org_id,
        kind=BillingNoticeKind.TOPUP_FAILED,
        dedupe_key=f"{key}:failed",
        params={"reason": reason, "failures": failures, "max_failures": AUTO_TOPUP_MAX_FAILURES},
        now=now,
        purchase=purchase,
    )
    if failures >= AUTO_TOPUP_MAX_FAILURES and account.auto_topup_enabled:
        CreditAccount.objects.filter(pk=account.pk).update(auto_topup_enabled=False)
        billing_notice_add(
            organization_id=org_id,
            kind=BillingNoticeKind.TOPUP_DISABLED,
            dedupe_key=f"{key}:disabled",
            params={"failures": failures},
            now=now,
            purchase=purchase,
        )


# The sweep ---------------------------------------------------------------------------------------


def auto_topup_due(*, now: datetime, limit: int = 500) -> list[int]:
    """Organizations to top up now (retries and catch-up): enabled, below the minimum, nothing in
    flight, cool-down passed. `auto_topup_run` decides again under the lock."""
    in_flight = CreditPurchase.objects.filter(
        organization_id=OuterRef("organization_id"),
        kind=PurchaseKind.AUTO_TOPUP,
        status__in=CreditPurchase.OPEN_STATUSES,
    )
    return list(
        CreditAccount.objects.filter(auto_topup_enabled=True, balance__lt=F("auto_topup_min_balance"))
        .filter(Q(auto_topup_last_charge_at__isnull=True) | Q(auto_topup_last_charge_at__lte=now - cooldown()))
        .exclude(Exists(in_flight))
        .order_by("organization_id")
        .values_list("organization_id", flat=True)[:limit]
    )
