"""The overview: meters, the limit-reached banner and the balance (usage.presentation builds them)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse

from accounts.models import Membership, Role
from accounts.views import OrgContext, org_page, render_org
from billing.views import SESSION_LIVE_NOTE, buy_dialog_context
from core.clock import now as clock_now
from usage.presentation import Live, live_state


def _live_context(ctx: OrgContext, live: Live) -> dict[str, Any]:
    owners = []
    if not ctx.can_manage and live.blocked:
        owners = list(
            Membership.objects.filter(organization=ctx.organization, role=Role.OWNER)
            .select_related("user")
            .order_by("id")
            .values_list("user__email", flat=True)[:3]
        )
    return {"live": live, "owners": owners}


@org_page()
def overview(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    live = live_state(organization_id=ctx.organization.pk, role=ctx.role, now=clock_now())
    context = {**_live_context(ctx, live), **(buy_dialog_context(ctx.organization.pk) if ctx.can_manage else {})}
    return render_org(request, ctx, "usage/overview.html", context, active="overview")


@org_page()
def overview_live(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """The overview's meters, banner and balance: polled by htmx every 30 s."""
    live = live_state(organization_id=ctx.organization.pk, role=ctx.role, now=clock_now())
    # After a purchase from the buy dialog: "1,000 credits added" in the live status region, once.
    added = request.session.pop(SESSION_LIVE_NOTE, None)
    context = {**_live_context(ctx, live), "oob": True, "added": added}
    return render_org(request, ctx, "usage/_live.html", context, active="overview")
