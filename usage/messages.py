"""What a denied request says, by plan and role (ARCHITECTURE.md, step 4)."""

from __future__ import annotations

from datetime import datetime

from django.utils.translation import gettext as _

from accounts.models import Role


def when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else ""


def limit_reached_message(
    *, meter_name: str, plan_name: str, plan_is_free: bool, role: str, resets_at: datetime | None, credits_blocked: bool
) -> str:
    reset = _(" It resets at %(when)s.") % {"when": when(resets_at)} if resets_at else ""
    head = _("You've reached your %(plan)s plan's usage limit for %(meter)s.") % {
        "plan": plan_name,
        "meter": meter_name,
    }
    manager = role in (Role.OWNER, Role.ADMIN)
    if plan_is_free:
        tail = _(" Upgrade to a paid plan for more usage.") if manager else _(" Ask an owner to upgrade the plan.")
    elif credits_blocked:
        tail = _(" Upgrade your plan for more.") if manager else _(" Ask an owner to upgrade the plan.")
    elif manager:
        tail = _(" Buy credits to keep working now.")
    else:
        tail = _(" Ask an owner of your organization to buy credits.")
    return head + reset + tail


def spend_cap_message(*, cap: str, role: str, resets_at: datetime) -> str:
    head = _("Your organization has reached its monthly credit spend cap of %(cap)s credits.") % {"cap": cap}
    if role in (Role.OWNER, Role.ADMIN):
        tail = _(" Raise the cap in billing settings, or wait until %(when)s.")
    else:
        tail = _(" Ask an owner to raise the cap, or wait until %(when)s.")
    return head + tail % {"when": when(resets_at)}
