"""Builders shared by the auto top-up tests (sequential and concurrent)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal

from billing.models import BillingNotice, CreditPurchase, LotCategory, PurchaseKind
from billing.services import credits_grant
from billing.services.autotopup import auto_topup_configure
from config.celery import app
from plans.models import Subscription
from tests.billing.payment_support import org_with_card
from tests.factories import AllowanceFactory, MeterFactory, PlanFactory


def org_topping_up(
    localstripe,
    number: str,
    *,
    balance: str = "100",
    min_balance: str = "50",
    target: str = "200",
    cap: int = 10_000,
    now: datetime,
):
    """An organization with a card, `balance` paid credits, and auto top-up on (min, target, cap).

    Its plan gives no allowance of a 5-credits-per-unit meter, so each unit used costs 5 credits.
    """
    allowance = AllowanceFactory(limit=Decimal(0), meter=MeterFactory(credits_per_unit=Decimal(5)), plan=PlanFactory())
    org, owner = org_with_card(localstripe, number)
    Subscription.objects.filter(organization=org).update(plan=allowance.plan)
    if Decimal(balance) > 0:
        credits_grant(organization_id=org.pk, credits=Decimal(balance), now=now, category=LotCategory.PAID)
    auto_topup_configure(
        organization_id=org.pk,
        enabled=True,
        min_balance=Decimal(min_balance),
        target_balance=Decimal(target),
        monthly_cap=cap,
        now=now,
        currency="usd",
    )
    return org, owner, allowance.meter


def topups(org) -> list[tuple[str, Decimal, int, str]]:
    return [
        (p.status, p.credits, p.amount, p.currency)
        for p in CreditPurchase.objects.filter(organization=org, kind=PurchaseKind.AUTO_TOPUP).order_by("id")
    ]


def notices(org) -> list[tuple[str, str]]:
    return [(n.kind, n.subject) for n in BillingNotice.objects.filter(organization=org).order_by("id")]


@contextmanager
def celery_eager() -> Iterator[None]:
    """Run `.delay()` in the caller, as a worker would (for tests only)."""
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = previous
