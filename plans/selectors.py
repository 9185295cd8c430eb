"""Reads of the catalogue and subscriptions.

The catalogue (meters, plans, allowances) is small and read on every usage call, so it is kept in
each process for CATALOGUE_CACHE_SECONDS and rebuilt after that (or at once by `catalogue_clear`).
A changed limit applies to windows opened after the change; an open window keeps its limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from threading import Lock

from plans.models import Meter, Overage, Plan, PlanAllowance, Subscription, window_label

CATALOGUE_CACHE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class MeterInfo:
    id: int
    key: str
    name: str
    unit: str
    unit_plural: str
    credits_per_unit: Decimal
    product_name: str


@dataclass(frozen=True, slots=True)
class AllowanceInfo:
    id: int
    plan_id: int
    meter_id: int
    limit: Decimal
    window_kind: str
    window_seconds: int | None

    @property
    def window_length(self) -> timedelta | None:
        return timedelta(seconds=self.window_seconds) if self.window_seconds else None

    @property
    def label(self) -> str:
        """Translated on each use: the catalogue is cached across requests in several languages."""
        return window_label(self.window_kind, self.window_seconds)


@dataclass(frozen=True, slots=True)
class PlanInfo:
    id: int
    key: str
    name: str
    price_amount: int
    currency: str
    period_months: int
    is_free: bool


@dataclass(slots=True)
class Catalogue:
    meters_by_key: dict[str, MeterInfo] = field(default_factory=dict)
    meters_by_id: dict[int, MeterInfo] = field(default_factory=dict)
    plans_by_id: dict[int, PlanInfo] = field(default_factory=dict)
    allowances: dict[tuple[int, int], tuple[AllowanceInfo, ...]] = field(default_factory=dict)
    blocked: set[tuple[int, int]] = field(default_factory=set)  # (plan_id, meter_id) that never draw credits
    plan_allowances: dict[int, tuple[AllowanceInfo, ...]] = field(default_factory=dict)
    allowances_by_id: dict[int, AllowanceInfo] = field(default_factory=dict)
    # What other layers derive from this catalogue and keep as long as it lives (see usage.services.fast).
    memo: dict[object, object] = field(default_factory=dict)

    def allowances_for(self, plan_id: int, meter_id: int) -> tuple[AllowanceInfo, ...]:
        return self.allowances.get((plan_id, meter_id), ())

    def credits_blocked(self, plan_id: int, meter_id: int) -> bool:
        return (plan_id, meter_id) in self.blocked


_cached: tuple[float, Catalogue] | None = None
_lock = Lock()


def catalogue_clear() -> None:
    global _cached
    with _lock:
        _cached = None


def _catalogue_load() -> Catalogue:
    cat = Catalogue()
    for meter in Meter.objects.filter(is_active=True).select_related("product"):
        info = MeterInfo(
            id=meter.pk,
            key=meter.key,
            name=meter.name,
            unit=meter.unit,
            unit_plural=meter.unit_plural or meter.unit,
            credits_per_unit=meter.credits_per_unit,
            product_name=meter.product.name,
        )
        cat.meters_by_key[meter.key] = info
        cat.meters_by_id[meter.pk] = info
    for plan in Plan.objects.all():
        cat.plans_by_id[plan.pk] = PlanInfo(
            id=plan.pk,
            key=plan.key,
            name=plan.name,
            price_amount=plan.price_amount,
            currency=plan.currency,
            period_months=plan.period_months,
            is_free=plan.is_free,
        )
    grouped: dict[tuple[int, int], list[AllowanceInfo]] = {}
    by_plan: dict[int, list[AllowanceInfo]] = {}
    for allowance in PlanAllowance.objects.order_by("plan_id", "meter_id", "window_seconds", "id"):
        allowance_info = AllowanceInfo(
            id=allowance.pk,
            plan_id=allowance.plan_id,
            meter_id=allowance.meter_id,
            limit=allowance.limit,
            window_kind=allowance.window_kind,
            window_seconds=allowance.window_seconds,
        )
        cat.allowances_by_id[allowance.pk] = allowance_info
        grouped.setdefault((allowance.plan_id, allowance.meter_id), []).append(allowance_info)
        by_plan.setdefault(allowance.plan_id, []).append(allowance_info)
        if allowance.overage == Overage.BLOCK:
            cat.blocked.add((allowance.plan_id, allowance.meter_id))
    cat.allowances = {key: tuple(value) for key, value in grouped.items()}
    cat.plan_allowances = {key: tuple(value) for key, value in by_plan.items()}
    return cat


def catalogue() -> Catalogue:
    global _cached
    now = time.monotonic()
    cached = _cached
    if cached is not None and cached[0] > now:
        return cached[1]
    loaded = _catalogue_load()
    with _lock:
        _cached = (now + CATALOGUE_CACHE_SECONDS, loaded)
    return loaded


def plan_by_key(key: str) -> Plan | None:
    return Plan.objects.filter(key=key).first()


def plan_default() -> Plan | None:
    return Plan.objects.filter(is_default=True).first() or Plan.objects.order_by("price_amount", "id").first()


def subscription_for(*, organization_id: int) -> Subscription | None:
    return Subscription.objects.select_related("plan").filter(organization_id=organization_id).first()


def plans_public() -> list[Plan]:
    """The plans customers can choose, in display order."""
    return list(Plan.objects.filter(is_public=True).order_by("sort_order", "price_amount", "id"))


def plan_public_by_key(key: str) -> Plan | None:
    return Plan.objects.filter(key=key, is_public=True).first() if 0 < len(key) <= 64 else None
