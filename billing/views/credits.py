"""The credits page (balance, auto top-up, lots, history, the cancellation and refund terms; rendered
by _credits_page) and the link the API's 402 answers point to."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect

from accounts.models import User
from accounts.selectors import is_member
from accounts.views import OrgContext, org_page
from billing.views._credits_page import credits_render


@org_page()
def credits_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return credits_render(request, ctx)


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
