"""Writes for subscriptions."""

from __future__ import annotations

from datetime import datetime

from accounts.models import Organization
from core.errors import NotFound
from plans.models import Plan, Subscription, SubscriptionStatus
from plans.selectors import plan_by_key


def subscription_start(*, organization: Organization, plan: Plan, now: datetime) -> Subscription:
    return Subscription.objects.create(organization=organization, plan=plan, anchor=now)


def subscription_change(*, organization: Organization, plan_key: str, now: datetime) -> Subscription:
    """Switch plan; the new plan's periods start now (a fresh anchor).

    Windows belong to a plan's allowances, so the new plan's windows start empty; usage already
    recorded stays in the ledger and the event log.
    """
    plan = plan_by_key(plan_key)
    if plan is None:
        raise NotFound(f"There is no plan {plan_key!r}.", code="plan_not_found")
    subscription, created = Subscription.objects.get_or_create(
        organization=organization, defaults={"plan": plan, "anchor": now}
    )
    if not created and subscription.plan_id != plan.pk:
        subscription.plan = plan
        subscription.anchor = now
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.save(update_fields=["plan", "anchor", "status", "updated_at"])
    return subscription
