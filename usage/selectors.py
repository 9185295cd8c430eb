"""Reads for the API and pages: entitlements (plan, windows, credits) and the event log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import QuerySet

from core.money import format_decimal
from core.sql import atomic_pipeline
from plans.selectors import catalogue
from usage.models import UsageEvent
from usage.services.engine import Engine


def entitlements(*, organization_id: int, now: datetime) -> dict[str, Any] | None:
    """Plan, every meter's windows as they stand now, the balance and open lots. Reads only."""
    with atomic_pipeline():  # the account and every window and lot it shows, in one exchange
        engine = Engine({organization_id}, now=now, lock=False, meters=catalogue().meters_by_id.keys(), with_lots=True)
    st = engine.state(organization_id)
    if st is None:
        return None
    cat = engine.catalogue
    meters = []
    if st.plan is not None:
        meter_ids = sorted({a.meter_id for a in cat.plan_allowances.get(st.plan.id, ())})
        engine.preload({(organization_id, meter_id) for meter_id in meter_ids})
        for meter_id in meter_ids:
            meter = cat.meters_by_id.get(meter_id)
            if meter is None:
                continue
            slots = engine.current_slots(st, meter)
            meters.append(
                {
                    "meter": meter.key,
                    "name": meter.name,
                    "unit": meter.unit,
                    "credits_per_unit": format_decimal(meter.credits_per_unit),
                    "credits_allowed": not cat.credits_blocked(st.plan.id, meter_id),
                    "blocked": any(s.room <= 0 for s in slots),
                    "windows": [s.as_dict() for s in slots],
                }
            )
    book = st.book
    return {
        "organization": organization_id,
        "plan": None
        if st.plan is None
        else {
            "key": st.plan.key,
            "name": st.plan.name,
            "price_amount": st.plan.price_amount,
            "currency": st.plan.currency,
            "is_free": st.plan.is_free,
        },
        "meters": meters,
        "credits": {
            "balance": format_decimal(book.balance),
            "available": format_decimal(book.available()),
            "monthly_spend_cap": None if book.spend_cap is None else format_decimal(book.spend_cap),
            "spent_this_month": format_decimal(book.spent_this_month),
            "lots": [
                {
                    "id": lot.pk,
                    "category": lot.category,
                    "source": lot.source,
                    "priority": lot.priority,
                    "granted": format_decimal(lot.granted),
                    "remaining": format_decimal(lot.remaining),
                    "effective_at": lot.effective_at.isoformat(),
                    "expires_at": lot.expires_at.isoformat() if lot.expires_at else None,
                }
                for lot in book.lots()  # open lots in draw order, loaded once with the account
                if lot.remaining > 0 and (lot.expires_at is None or lot.expires_at > now)
            ],
        },
    }


def events_for(*, organization_id: int) -> QuerySet[UsageEvent]:
    return (
        UsageEvent.objects.filter(organization_id=organization_id)
        .select_related("meter")
        .order_by("-created_at", "-id")
    )
