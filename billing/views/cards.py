"""The payment methods page: the cards on file, which one purchases charge, removing one."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.views import OrgContext, org_page, render_org
from billing.selectors import cards_with_default
from billing.services.purchases import card_remove, card_set_default
from billing.views._common import PAYMENT_METHOD_ID
from billing.views.buy import buy_dialog_context
from core.clock import now as clock_now
from core.errors import DomainError


@org_page()
def cards_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """The cards on file: brand, last four digits, expiry, which one purchases charge."""
    error = ""
    try:
        cards, default_id = cards_with_default(organization_id=ctx.organization.pk)
    except DomainError as exc:  # the payment provider did not answer
        cards, default_id, error = [], "", _(exc.message)
    rows = [{"card": card, "is_default": card.id == default_id} for card in cards]
    rows.sort(key=lambda row: not row["is_default"])
    return render_org(
        request,
        ctx,
        "billing/cards.html",
        {"rows": rows, "cards_error": error, **buy_dialog_context(ctx.organization.pk), "add_card": True},
        active="cards",
    )


def _card_action(request: HttpRequest, ctx: OrgContext, *, remove: bool) -> HttpResponse:
    payment_method = request.POST.get("payment_method", "")
    org_id = ctx.organization.pk
    if not PAYMENT_METHOD_ID.match(payment_method):
        messages.error(request, _("This card is not on file."))
    else:
        try:
            if remove:
                card_remove(organization_id=org_id, payment_method_id=payment_method, now=clock_now())
                messages.success(request, _("The card is removed."))
            else:
                card_set_default(organization_id=org_id, payment_method_id=payment_method, now=clock_now())
                messages.success(request, _("Purchases and automatic top-ups now charge this card."))
        except DomainError as exc:
            messages.error(request, _(exc.message))
    return redirect("org_cards", org_id=org_id)


@require_POST
@org_page(manage=True)
def card_make_default(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return _card_action(request, ctx, remove=False)


@require_POST
@org_page(manage=True)
def card_delete(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return _card_action(request, ctx, remove=True)
