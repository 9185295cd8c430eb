"""Paid plans: the upgrade from the dashboard and the renewal at each period start, charged with
the card on file by our own Celery task (ARCHITECTURE.md, Payments).

Choices (documented for the dashboard and the admin):
- An upgrade starts a fresh period now, at the plan's full price: the anchor moves to the moment
  the payment succeeds, and nothing of the previous plan is prorated or refunded. The confirm
  dialog must say so. A declined upgrade changes nothing.
- A subscription is renewed by us only once we have charged it (`Subscription.paid_through` is
  set by a paid upgrade or renewal). A plan that an admin assigned without a charge (free, comped
  or invoiced elsewhere) has no `paid_through` and is never charged here.
- At most one renewal per subscription period (a partial unique constraint on
  (subscription, period_start) over the purchases that are paid or in flight). The period charged
  is the one that contains `now`: after an outage of any length the catch-up charges once, and a
  period that has already ended is never charged.
- A failed renewal marks the subscription past due, and is retried RENEWAL_RETRY_AFTER after the
  first failure (1 and 3 days); after RENEWAL_MAX_ATTEMPTS failed attempts the organization falls
  back to the default (free) plan with a fresh anchor. An email at every step.

Every payment goes through the credit-pack machinery (purchase_charge -> purchase_settle), which
calls `plan_payment_outcome_record` when it succeeds or fails, whichever path learns it first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction

from billing.emails import card_params
from billing.models import (
    BillingNoticeKind,
    CreditPurchase,
    PurchaseKind,
    PurchaseStatus,
    StripeCustomer,
)
from billing.services import purchases
from billing.services.book import credit_books_lock
from billing.services.notices import billing_notice_add
from billing.stripe_gateway import PaymentProviderError
from core.errors import Conflict, DomainError, NotFound
from plans.models import Plan, Subscription, SubscriptionStatus
from plans.periods import period_bounds, period_index_at, period_start
from plans.selectors import plan_default

logger = logging.getLogger(__name__)

RENEWAL_MAX_ATTEMPTS = 3
# When attempt n+2 may run, counted from the first failure of the period (attempt 1 is at its start).
RENEWAL_RETRY_AFTER = (timedelta(days=1), timedelta(days=3))
# Renewal purchases that hold the period's slot: paid, or possibly about to be.
LIVE_STATUSES = (
    PurchaseStatus.PENDING,
    PurchaseStatus.REQUIRES_ACTION,
    PurchaseStatus.SUCCEEDED,
    PurchaseStatus.REFUNDED,
)


@dataclass(frozen=True)
class Renewal:
    """What `renewal_charge` did: `reason` is "charged" (with the purchase) or why it did nothing."""

    reason: str
    purchase: CreditPurchase | None = None


def _locked_subscription(organization_id: int, now: datetime) -> Subscription | None:
    """The organization's credit account lock (the per-organization lock), then its subscription row."""
    if organization_id not in credit_books_lock([organization_id], now=now):
        return None
    return (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("plan", "organization")
        .filter(organization_id=organization_id)
        .first()
    )


def _card(organization_id: int) -> StripeCustomer:
    customer = StripeCustomer.objects.filter(organization_id=organization_id).first()
    if customer is None or not customer.has_card:
        raise Conflict("Add a card before choosing a paid plan.", code="card_required")
    return customer


def _period_end(subscription: Subscription, start: datetime) -> datetime:
    months = subscription.plan.period_months
    tz = subscription.organization.timezone
    index = period_index_at(anchor=subscription.anchor, at=start, months=months, tz=tz)
    return period_start(anchor=subscription.anchor, index=index + 1, months=months, tz=tz)


# Upgrade ---------------------------------------------------------------------------------------------


def subscription_upgrade(
    *, organization_id: int, plan_key: str, now: datetime, actor_id: int | None = None
) -> purchases.PurchaseResult:
    """Move to a paid plan, charging its full price for a fresh period that starts when it is paid.

    Succeeded: the plan has changed before this returns. Requires action: the client secret is
    returned, and the plan changes when the webhook (or the sweep) learns the payment. Declined:
    nothing changes. Outside any transaction (network).
    """
    plan = Plan.objects.filter(key=plan_key, is_public=True).first()
    if plan is None:
        raise NotFound(f"There is no plan {plan_key!r}.", code="plan_not_found")
    if plan.is_free:
        raise DomainError("This plan is free: there is nothing to pay.", code="plan_not_paid")
    customer = _card(organization_id)
    with transaction.atomic():
        subscription = _locked_subscription(organization_id, now)
        if subscription is None:
            raise NotFound("There is no such organization.", code="organization_not_found")
        if subscription.plan_id == plan.pk:
            raise Conflict(f"You are already on the {plan.name} plan.", code="already_on_plan")
        try:
            with transaction.atomic():
                purchase = CreditPurchase.objects.create(
                    organization_id=organization_id,
                    kind=PurchaseKind.PLAN_UPGRADE,
                    subscription=subscription,
                    plan=plan,
                    period_start=now,
                    credits=0,
                    amount=plan.price_amount,
                    currency=plan.currency,
                    payment_method_id=customer.default_payment_method_id,
                    card_brand=customer.card_brand,
                    card_last4=customer.card_last4,
                    actor_id=actor_id,
                    created_at=now,
                    updated_at=now,
                )
        except IntegrityError:
            raise Conflict("A payment for your plan is already in progress.", code="plan_payment_in_progress") from None
    return purchases.purchase_charge(purchase=purchase, customer_id=customer.customer_id, now=now)


# Renewals ----------------------------------------------------------------------------------------


def _is_due(subscription: Subscription, now: datetime) -> bool:
    return (
        not subscription.plan.is_free
        and subscription.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)
        and subscription.paid_through is not None
        and subscription.paid_through <= now
    )


def renewals_due(*, now: datetime, limit: int = 200) -> list[int]:
    """Organizations whose paid subscription has run past what was paid for."""
    return list(
        Subscription.objects.filter(
            plan__price_amount__gt=0,
            status__in=[SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE],
            paid_through__isnull=False,
            paid_through__lte=now,
        )
        .order_by("paid_through", "id")
        .values_list("organization_id", flat=True)[:limit]
    )


def renewals_run_due(*, now: datetime) -> int:
    """Charge every subscription due now (once per period; retries when their time has come);
    returns how many charges were made. Safe to run at any time, twice, or after an outage."""
    charged = 0
    for organization_id in renewals_due(now=now):
        try:
            if renewal_charge(organization_id=organization_id, now=now).reason == "charged":
                charged += 1
        except Exception:  # one organization's problem must not stop the others
            logger.exception("renewal of organization %s", organization_id)
    return charged


def renewal_charge(*, organization_id: int, now: datetime) -> Renewal:
    """Charge the current period of this organization's paid subscription if it is due.

    Decides under the organization's lock and commits the purchase row, then charges outside the
    transaction. Must not be called inside a transaction.
    """
    with transaction.atomic():
        subscription = _locked_subscription(organization_id, now)
        if subscription is None:
            return Renewal("no_subscription")
        if not _is_due(subscription, now):
            return Renewal("not_due")
        start, end = period_bounds(
            anchor=subscription.anchor,
            at=now,
            months=subscription.plan.period_months,
            tz=subscription.organization.timezone,
        )
        existing = CreditPurchase.objects.filter(
            subscription=subscription, period_start=start, kind=PurchaseKind.RENEWAL, status__in=LIVE_STATUSES
        ).first()
        if existing is not None:
            if existing.status in CreditPurchase.OPEN_STATUSES:
                return Renewal("in_flight", existing)
            _paid(subscription, end)  # paid, but paid_through lagged behind (repair)
            return Renewal("already_paid", existing)
        if subscription.renewal_failures and subscription.past_due_since is not None:
            step = min(subscription.renewal_failures, len(RENEWAL_RETRY_AFTER)) - 1
            if now < subscription.past_due_since + RENEWAL_RETRY_AFTER[step]:
                return Renewal("retry_later")
        customer = StripeCustomer.objects.filter(organization_id=organization_id).first()
        if customer is None or not customer.has_card:
            _renewal_failed(subscription, now, reason="There is no card on file.", purchase=None, period=start)
            return Renewal("no_card")
        try:
            with transaction.atomic():
                purchase = CreditPurchase.objects.create(
                    organization_id=organization_id,
                    kind=PurchaseKind.RENEWAL,
                    subscription=subscription,
                    plan=subscription.plan,
                    period_start=start,
                    period_end=end,
                    credits=0,
                    amount=subscription.plan.price_amount,
                    currency=subscription.plan.currency,
                    payment_method_id=customer.default_payment_method_id,
                    card_brand=customer.card_brand,
                    card_last4=customer.card_last4,
                    created_at=now,
                    updated_at=now,
                )
        except IntegrityError:  # an upgrade's payment is in flight
            return Renewal("in_flight")
    try:
        result = purchases.purchase_charge(purchase=purchase, customer_id=customer.customer_id, now=now)
    except PaymentProviderError as exc:
        # Outcome unknown: the purchase stays pending and the reconciliation sweep settles it.
        logger.warning("renewal purchase %s: %s", purchase.pk, exc.message)
        return Renewal("charged", purchase)
    return Renewal("charged", result.purchase)


def _paid(subscription: Subscription, end: datetime) -> None:
    if subscription.paid_through is None or subscription.paid_through < end:
        subscription.paid_through = end
    subscription.status = SubscriptionStatus.ACTIVE
    subscription.renewal_failures = 0
    subscription.past_due_since = None
    subscription.save(update_fields=["paid_through", "status", "renewal_failures", "past_due_since", "updated_at"])


# Outcomes ----------------------------------------------------------------------------------------


def plan_payment_outcome_record(*, purchase: CreditPurchase, now: datetime) -> None:
    """A renewal or upgrade just succeeded or failed (called by purchase_settle / purchase_fail,
    inside their transaction, with the purchase row locked)."""
    with transaction.atomic():
        subscription = _locked_subscription(purchase.organization_id, now)
        if subscription is None or subscription.pk != purchase.subscription_id:
            return
        assert purchase.plan is not None and purchase.period_start is not None
        if purchase.kind == PurchaseKind.PLAN_UPGRADE:
            if purchase.status == PurchaseStatus.SUCCEEDED:
                _upgraded(subscription, purchase, now)
            return  # a declined upgrade changes nothing; the customer saw why in the dialog
        if subscription.plan_id != purchase.plan_id:
            # The plan changed since this renewal was charged (e.g. it fell back to free): an admin
            # decides (the purchase shows in the admin, and may be refunded).
            logger.warning("renewal purchase %s settled for a plan the subscription left", purchase.pk)
            return
        if purchase.status == PurchaseStatus.SUCCEEDED:
            end = _period_end(subscription, purchase.period_start)
            _paid(subscription, end)
            billing_notice_add(
                organization_id=purchase.organization_id,
                kind=BillingNoticeKind.RENEWAL_SUCCEEDED,
                dedupe_key=f"purchase:{purchase.pk}:succeeded",
                params={
                    "plan": purchase.plan.name,
                    "amount": purchase.amount,
                    "currency": purchase.currency,
                    **card_params(purchase),
                    "start": purchase.period_start.isoformat(),
                    "end": end.isoformat(),
                },
                now=now,
                purchase=purchase,
            )
        else:
            _renewal_failed(
                subscription,
                now,
                reason=purchase.failure_message or "Your card was declined.",
                purchase=purchase,
                period=purchase.period_start,
            )


def _upgraded(subscription: Subscription, purchase: CreditPurchase, now: datetime) -> None:
    plan = purchase.plan
    assert plan is not None
    subscription.plan = plan
    subscription.anchor = now
    subscription.paid_through = period_start(
        anchor=now, index=1, months=plan.period_months, tz=subscription.organization.timezone
    )
    subscription.status = SubscriptionStatus.ACTIVE
    subscription.renewal_failures = 0
    subscription.past_due_since = None
    subscription.save()
    # The period paid for is the one that starts now (the receipt shows it).
    purchase.period_start, purchase.period_end = now, subscription.paid_through
    CreditPurchase.objects.filter(pk=purchase.pk).update(period_start=now, period_end=subscription.paid_through)
    billing_notice_add(
        organization_id=purchase.organization_id,
        kind=BillingNoticeKind.PLAN_STARTED,
        dedupe_key=f"purchase:{purchase.pk}:succeeded",
        params={
            "plan": plan.name,
            "amount": purchase.amount,
            "currency": purchase.currency,
            **card_params(purchase),
            "start": now.isoformat(),
            "end": subscription.paid_through.isoformat(),
        },
        now=now,
        purchase=purchase,
    )


def _renewal_failed(
    subscription: Subscription, now: datetime, *, reason: str, purchase: CreditPurchase | None, period: datetime
) -> None:
    """One more failed attempt (caller holds the lock): past due and a retry date, or, after the
    last attempt, the default free plan from now."""
    subscription.renewal_failures += 1
    if subscription.past_due_since is None:
        subscription.past_due_since = now
    failures = subscription.renewal_failures
    plan = subscription.plan
    org_id = subscription.organization_id
    key = (
        f"purchase:{purchase.pk}"
        if purchase is not None
        else f"renewal:{subscription.pk}:{period.isoformat()}:{failures}"
    )
    fallback = plan_default()
    if failures >= RENEWAL_MAX_ATTEMPTS and fallback is not None and fallback.is_free:
        subscription.plan = fallback
        subscription.anchor = now
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.paid_through = None
        subscription.renewal_failures = 0
        subscription.past_due_since = None
        subscription.save()
        billing_notice_add(
            organization_id=org_id,
            kind=BillingNoticeKind.PLAN_DOWNGRADED,
            dedupe_key=f"{key}:downgraded",
            params={"plan": plan.name, "failures": failures, "reason": reason, "fallback": fallback.name},
            now=now,
            purchase=purchase,
        )
        return
    subscription.status = SubscriptionStatus.PAST_DUE
    subscription.save(update_fields=["renewal_failures", "past_due_since", "status", "updated_at"])
    retry_at = None  # none left: the email asks for a new card
    if failures < RENEWAL_MAX_ATTEMPTS:
        retry = subscription.past_due_since + RENEWAL_RETRY_AFTER[min(failures, len(RENEWAL_RETRY_AFTER)) - 1]
        retry_at = retry.isoformat()
    else:
        logger.error("subscription %s: no free default plan to fall back to", subscription.pk)
    billing_notice_add(
        organization_id=org_id,
        kind=BillingNoticeKind.RENEWAL_FAILED,
        dedupe_key=f"{key}:failed",
        params={
            "plan": plan.name,
            "amount": plan.price_amount,
            "currency": plan.currency,
            "reason": reason,
            "retry_at": retry_at,
            "max_attempts": RENEWAL_MAX_ATTEMPTS,
        },
        now=now,
        purchase=purchase,
    )
