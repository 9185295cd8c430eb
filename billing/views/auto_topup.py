"""The auto top-up form's POST (the credits page's section shows it: see _credits_page)."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.translation import get_language
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.views import OrgContext, org_page
from billing.forms import AutoTopUpForm
from billing.pricing import money_display
from billing.selectors import auto_topup_currency, credit_account
from billing.services.autotopup import auto_topup_configure
from billing.views._credits_page import credits_render
from core.clock import now as clock_now
from core.errors import DomainError


def _auto_topup_error(exc: DomainError) -> str:
    """A rule's sentence in the viewer's language, with its amount written for that language."""
    currency = str(exc.extra.get("currency", ""))
    if exc.code == "currency_not_sold":
        return _("Credits are not sold in %(currency)s.") % {"currency": currency.upper()}
    if "minimum_amount" in exc.extra:
        amount = money_display(int(exc.extra["minimum_amount"]), currency, language=get_language())
        return _("The monthly limit must cover at least one top-up (%(min)s).") % {"min": amount}
    return _(exc.message)


@require_POST
@org_page(manage=True)
def auto_topup_save(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Turn auto top-up on (with its settings) or off; only this form ever turns it on. Invalid
    settings re-render the credits page with the form's errors."""
    org_id = ctx.organization.pk
    account = credit_account(organization_id=org_id)
    form = AutoTopUpForm(request.POST, currency=auto_topup_currency(organization_id=org_id, account=account))
    if not form.is_valid():
        return credits_render(request, ctx, auto_form=form, status=400)
    data = form.cleaned_data
    enabled = bool(data["enabled"])
    try:
        auto_topup_configure(
            organization_id=org_id,
            enabled=enabled,
            min_balance=data["min_balance"] if data["min_balance"] is not None else Decimal(0),
            target_balance=data["target_balance"] if data["target_balance"] is not None else Decimal(0),
            monthly_cap=form.monthly_cap_minor(),
            now=clock_now(),
            currency=form.currency,
        )
    except DomainError as exc:
        field = exc.extra.get("field")
        form.add_error(field if field in form.fields else None, _auto_topup_error(exc))
        return credits_render(request, ctx, auto_form=form, status=400)
    messages.success(request, _("Automatic top-up is on.") if enabled else _("Automatic top-up is off."))
    return redirect(reverse("org_credits", kwargs={"org_id": org_id}) + "#auto-topup")
