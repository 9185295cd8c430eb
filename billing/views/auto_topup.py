"""The credits page's auto top-up section: what it shows, and its form's POST."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.translation import get_language, gettext_noop
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.views import OrgContext, org_page
from billing.forms import AutoTopUpForm
from billing.models import CreditAccount
from billing.pricing import format_money, money_display
from billing.selectors import credit_account, pack_rate
from billing.services.autotopup import auto_topup_configure, auto_topup_quote
from core.clock import now as clock_now
from core.errors import DomainError
from core.money import format_decimal
from plans.selectors import subscription_for

# The auto top-up rules' sentences (billing.services.autotopup), marked here for translation.
_AUTO_TOPUP_MESSAGES = (
    gettext_noop("The minimum balance cannot be negative."),
    gettext_noop("The target balance must be more than the minimum balance."),
    gettext_noop("Set a monthly limit for automatic top-ups."),
    gettext_noop(
        "A top-up from the minimum to the target would charge less than our payment provider accepts: "
        "raise the target or lower the minimum."
    ),
    gettext_noop("Add a card before turning on automatic top-up."),
)


def _auto_topup_error(exc: DomainError) -> str:
    """A rule's sentence in the viewer's language, with its amount written for that language."""
    currency = str(exc.extra.get("currency", ""))
    if exc.code == "currency_not_sold":
        return _("Credits are not sold in %(currency)s.") % {"currency": currency.upper()}
    if "minimum_amount" in exc.extra:
        amount = money_display(int(exc.extra["minimum_amount"]), currency, language=get_language())
        return _("The monthly limit must cover at least one top-up (%(min)s).") % {"min": amount}
    return _(exc.message)


def _auto_topup_currency(organization_id: int, account: CreditAccount | None) -> str:
    if account is not None and account.auto_topup_currency:
        return account.auto_topup_currency
    subscription = subscription_for(organization_id=organization_id)
    return subscription.plan.currency if subscription is not None else "usd"


def auto_topup_context(
    organization_id: int, account: CreditAccount | None, form: AutoTopUpForm | None
) -> dict[str, Any]:
    """The credits page's auto top-up section: the saved state, what one top-up charges, the form."""
    currency = _auto_topup_currency(organization_id, account)
    if form is None:
        cap = account.auto_topup_monthly_cap_amount if account is not None else None
        initial: dict[str, Any] = {"enabled": bool(account and account.auto_topup_enabled)}
        if account is not None and account.auto_topup_target_balance > 0:
            initial.update(
                min_balance=format_decimal(account.auto_topup_min_balance),
                target_balance=format_decimal(account.auto_topup_target_balance),
            )
        if cap:
            initial["monthly_cap"] = format_money(cap, currency)
        form = AutoTopUpForm(initial=initial, currency=currency)
    quote = auto_topup_quote(organization_id=organization_id)
    return {
        "auto_pack": pack_rate(currency=currency),
        "auto_form": form,
        "auto_enabled": bool(account and account.auto_topup_enabled),
        "auto_quote": {"credits": quote[0], "amount": quote[1], "currency": quote[2]} if quote else None,
        "auto_currency": currency,
    }


@require_POST
@org_page(manage=True)
def auto_topup_save(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Turn auto top-up on (with its settings) or off; only this form ever turns it on. Invalid
    settings re-render the credits page with the form's errors."""
    from billing.views.credits import credits_render  # the page that hosts this section imports this module

    org_id = ctx.organization.pk
    account = credit_account(organization_id=org_id)
    form = AutoTopUpForm(request.POST, currency=_auto_topup_currency(org_id, account))
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
