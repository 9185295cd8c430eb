"""The credits page (balance, auto top-up, lots, history, the cancellation and refund terms) and the
link the API's 402 answers point to."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect

from accounts.models import User
from accounts.selectors import is_member
from accounts.views import OrgContext, org_page, render_org
from billing.forms import AutoTopUpForm
from billing.selectors import credit_account, ledger_entries, lots_open
from billing.views.auto_topup import auto_topup_context
from billing.views.buy import SESSION_LIVE_NOTE, buy_dialog_context
from core.clock import now as clock_now

LEDGER_PER_PAGE = 50


@org_page()
def credits_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return credits_render(request, ctx)


def credits_render(
    request: HttpRequest, ctx: OrgContext, *, auto_form: AutoTopUpForm | None = None, status: int = 200
) -> HttpResponse:
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
            **buy_dialog_context(org_id),
            **auto_topup_context(org_id, account, auto_form),
            # the refresh after a purchase from the dialog says it in the live status region
            "added": request.session.pop(SESSION_LIVE_NOTE, None) if request.headers.get("HX-Request") else None,
        },
        active="credits",
        status=status,
    )


@login_required
def purchase_link(request: HttpRequest) -> HttpResponse:
    """Where the API's 402 answers point (settings.CREDITS_PURCHASE_PATH?organization=<id>)."""
    raw = request.GET.get("organization", "")
    if not raw.isdigit() or len(raw) > 18:
        return redirect("home")
    user = request.user
    assert isinstance(user, User)  # login_required
    if not is_member(organization_id=int(raw), user_id=user.pk):
        raise Http404("There is no such organization.")
    return redirect("org_credits", org_id=int(raw))
