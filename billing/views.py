"""Dashboard pages about credits and plans. Read-only: buying and plan changes come with payments."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect

from accounts.models import Membership, User
from accounts.views import OrgContext, org_page, render_org
from billing.selectors import credit_account, ledger_entries, lots_open, packs_active
from core.clock import now as clock_now
from plans.models import Plan
from plans.selectors import catalogue, subscription_for

LEDGER_PER_PAGE = 50


@org_page()
def credits_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    now = clock_now()
    org_id = ctx.organization.pk
    account = credit_account(organization_id=org_id)
    lots = list(lots_open(organization_id=org_id, now=now))
    entries = ledger_entries(organization_id=org_id)
    before = request.GET.get("before", "")
    if before.isdigit() and len(before) < 19:
        entries = entries.filter(id__lt=int(before))
    page = list(entries[: LEDGER_PER_PAGE + 1])
    older = ""
    if len(page) > LEDGER_PER_PAGE:
        page = page[:LEDGER_PER_PAGE]
        older = str(page[-1].pk)
    return render_org(
        request,
        ctx,
        "billing/credits.html",
        {
            "account": account,
            "balance": account.balance if account else 0,
            "lots": lots,
            "entries": page,
            "older": older,
            "is_paged": bool(before),
            "packs": list(packs_active()),
        },
        active="credits",
    )


def _plan_rows(plans: list[Plan]) -> list[dict[str, Any]]:
    """Each plan with its allowances grouped by meter, in catalogue order."""
    cat = catalogue()
    rows = []
    for plan in plans:
        by_meter: dict[int, list[Any]] = {}
        for allowance in cat.plan_allowances.get(plan.pk, ()):
            by_meter.setdefault(allowance.meter_id, []).append(allowance)
        meters = []
        for meter_id, allowances in by_meter.items():
            meter = cat.meters_by_id.get(meter_id)
            if meter is None:
                continue
            meters.append(
                {
                    "meter": meter,
                    "allowances": allowances,
                    "included": any(a.limit > 0 for a in allowances),
                    "credits_allowed": not cat.credits_blocked(plan.pk, meter_id),
                }
            )
        meters.sort(key=lambda item: (item["meter"].product_name, item["meter"].name))  # type: ignore[attr-defined]
        rows.append({"plan": plan, "meters": meters})
    return rows


@org_page()
def plans_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    subscription = subscription_for(organization_id=ctx.organization.pk)
    plans = list(Plan.objects.filter(is_public=True).order_by("sort_order", "price_amount", "id"))
    if subscription and subscription.plan not in plans:
        plans.insert(0, subscription.plan)
    return render_org(
        request,
        ctx,
        "billing/plans.html",
        {
            "subscription": subscription,
            "rows": _plan_rows(plans),
        },
        active="plans",
    )


@login_required
def purchase_link(request: HttpRequest) -> HttpResponse:
    """Where the API's 402 answers point (settings.CREDITS_PURCHASE_PATH?organization=<id>)."""
    raw = request.GET.get("organization", "")
    if not raw.isdigit() or len(raw) > 18:
        return redirect("home")
    user = request.user
    assert isinstance(user, User)  # login_required
    if not Membership.objects.filter(organization_id=int(raw), user=user).exists():
        raise Http404("There is no such organization.")
    return redirect("org_credits", org_id=int(raw))
