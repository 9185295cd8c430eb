"""What the overview shows: each meter's windows, its state, and the limit-reached banner.

Built from usage.selectors.entitlements alone (no event is scanned), so the overview and its
30-second live refresh stay cheap. Presentation only: nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from plans.periods import month_start
from plans.selectors import Catalogue, catalogue
from usage.messages import limit_reached_message, spend_cap_message
from usage.selectors import entitlements
from usage.templatetags.dashboard import duration, number, percent, unit_word, window_label

WARN_PERCENT = 80


@dataclass(slots=True)
class WindowView:
    html_id: str
    label: str
    limit: Decimal
    used: Decimal
    remaining: Decimal
    percent: int
    resets_at: datetime | None
    resets_in: str
    state: str  # ok | warn | full | none (nothing included)
    low: Decimal
    high: Decimal
    unit: str
    unusable: bool = False  # another window of the meter blocks it


@dataclass(slots=True)
class MeterView:
    key: str
    name: str
    product: str
    credits_per_unit: Decimal
    credits_allowed: bool
    windows: list[WindowView]
    status: str  # ok | warn | credits | blocked | excluded | payg
    unit_one: str
    blocked_until: datetime | None = None
    blocked_in: str = ""
    blocking_label: str = ""
    message: str = ""
    spend_cap: bool = False


@dataclass(slots=True)
class Live:
    plan: dict[str, Any] | None
    balance: Decimal
    available: Decimal
    meters: list[MeterView] = field(default_factory=list)
    now: datetime | None = None

    @property
    def blocked(self) -> list[MeterView]:
        return [m for m in self.meters if m.status == "blocked"]

    @property
    def plan_is_free(self) -> bool:
        return bool(self.plan and self.plan["is_free"])


def live_state(*, organization_id: int, role: str, now: datetime) -> Live:
    """Every meter of the organization's plan with its state, worded for the viewer's role."""
    data = entitlements(organization_id=organization_id, now=now)
    if data is None:
        return Live(plan=None, balance=Decimal(0), available=Decimal(0), now=now)
    cat = catalogue()
    credits = data["credits"]
    available = Decimal(credits["available"])
    cap = Decimal(credits["monthly_spend_cap"]) if credits["monthly_spend_cap"] is not None else None
    cap_room = None if cap is None else max(cap - Decimal(credits["spent_this_month"]), Decimal(0))
    live = Live(plan=data["plan"], balance=Decimal(credits["balance"]), available=available, now=now)
    plan_name = data["plan"]["name"] if data["plan"] else ""
    for m in data["meters"]:
        view = _meter_view(m, cat, now=now)
        cpu = view.credits_per_unit
        credits_cover = cpu == 0 or available >= cpu
        cap_blocks = cap_room is not None and cpu > 0 and cap_room < cpu
        can_pay = view.credits_allowed and credits_cover and not cap_blocks
        included = bool(view.windows) and min(w.limit for w in view.windows) > 0
        exhausted = [w for w in view.windows if w.state == "full"]
        if not included:
            view.status = "payg" if can_pay or view.credits_allowed else "excluded"
        elif exhausted and can_pay:
            view.status = "credits"
        elif exhausted:
            # Credits would pay, but this month's spend cap stops them: the banner is about the cap.
            cap_reached = view.credits_allowed and credits_cover and cap_blocks and cap is not None
            _mark_blocked(view, exhausted, now=now)
            view.spend_cap = cap_reached
            view.message = limit_banner_message(
                view,
                role=role,
                plan_name=plan_name,
                plan_is_free=live.plan_is_free,
                spend_cap=cap if cap_reached else None,
                now=now,
            )
        elif any(w.state == "warn" for w in view.windows):
            view.status = "warn"
        live.meters.append(view)
    return live


def limit_banner_message(
    meter: MeterView, *, role: str, plan_name: str, plan_is_free: bool, spend_cap: Decimal | None, now: datetime
) -> str:
    """The banner of a blocked meter: the spend cap when that is what stops credits, else the limit."""
    if spend_cap is not None:
        return spend_cap_message(cap=number(spend_cap), role=role, resets_at=_next_month(now))
    return limit_reached_message(
        meter_name=meter.name,
        plan_name=plan_name,
        plan_is_free=plan_is_free,
        role=role,
        resets_at=None,
        credits_blocked=not meter.credits_allowed,
    )


def _mark_blocked(meter: MeterView, exhausted: list[WindowView], *, now: datetime) -> None:
    """Blocked until the last exhausted window resets; the meter's other windows cannot be used meanwhile."""
    meter.status = "blocked"
    ends = [w.resets_at for w in exhausted if w.resets_at]
    meter.blocked_until = max(ends) if ends else None
    meter.blocked_in = duration(meter.blocked_until - now) if meter.blocked_until else ""
    meter.blocking_label = ", ".join(w.label for w in exhausted)
    for w in meter.windows:
        w.unusable = w.state != "full"


def _meter_view(m: dict[str, Any], cat: Catalogue, *, now: datetime) -> MeterView:
    info = cat.meters_by_key.get(m["meter"])
    singular = info.unit if info else m["unit"]
    plural = info.unit_plural if info else m["unit"]
    return MeterView(
        key=m["meter"],
        name=m["name"],
        product=info.product_name if info else "",
        credits_per_unit=Decimal(m["credits_per_unit"]),
        credits_allowed=m["credits_allowed"],
        windows=[_window_view(m["meter"], w, cat, singular=singular, plural=plural, now=now) for w in m["windows"]],
        status="ok",
        unit_one=unit_word(singular, plural, Decimal(1)),
    )


def _window_view(
    meter_key: str, w: dict[str, Any], cat: Catalogue, *, singular: str, plural: str, now: datetime
) -> WindowView:
    allowance = cat.allowances_by_id.get(w["allowance"])
    limit, used = Decimal(w["limit"]), Decimal(w["used"])
    resets_at = datetime.fromisoformat(w["resets_at"]) if w["resets_at"] else None
    pct = percent(used, limit)
    state = "none" if limit <= 0 else "full" if used >= limit else "warn" if pct >= WARN_PERCENT else "ok"
    return WindowView(
        html_id=f"meter-{meter_key.replace('.', '-')}-{w['allowance']}",
        label=window_label(w["kind"], allowance.window_seconds if allowance else None),
        limit=limit,
        used=used,
        remaining=Decimal(w["remaining"]),
        percent=pct,
        resets_at=resets_at,
        resets_in=duration(resets_at - now) if resets_at else "",
        state=state,
        low=limit * (WARN_PERCENT - Decimal("0.5")) / 100,
        high=limit * 95 / 100,
        unit=unit_word(singular, plural, limit),
    )


def _next_month(now: datetime) -> datetime:
    start = month_start(now)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
