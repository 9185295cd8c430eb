"""The buy dialog (overview, credits and payment methods pages) and its actions: buy a pack with the
card on file, settle a 3-D Secure payment, add a card. The dialog's body is swapped by htmx."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.views import OrgContext, org_page, render_org
from billing.models import CreditPurchase, PurchaseStatus
from billing.selectors import billing_currency, card_on_file, packs_for_sale
from billing.services.purchases import card_set_default, card_setup_start, purchase_refresh, purchase_start
from billing.stripe_gateway import CardDeclinedError, PaymentProviderError, PaymentRequestError
from billing.views._common import PAYMENT_METHOD_ID, stripe_js_context
from core.clock import now as clock_now
from core.errors import DomainError

# The live status region of the overview reads this once, after the refresh a purchase triggers.
SESSION_LIVE_NOTE = "live_note"
BUY_TOKEN = re.compile(r"^[0-9a-f]{32}$")


def buy_dialog_context(organization_id: int, *, currency: str | None = None) -> dict[str, Any]:
    """What templates/billing/_buy_dialog.html needs (the overview and the credits page use it): the packs
    sold in the organization's billing currency, and no other (`currency`: that currency, when the
    caller has read it already)."""
    currency = currency or billing_currency(organization_id=organization_id)
    return {
        "packs": list(packs_for_sale(currency=currency)),
        "card": card_on_file(organization_id=organization_id),
        "buy_token": uuid.uuid4().hex,
        **stripe_js_context(),
    }


def _buy_body(
    request: HttpRequest, ctx: OrgContext, *, status: int = 200, headers: dict[str, str] | None = None, **extra: Any
) -> HttpResponse:
    response = render_org(
        request, ctx, "billing/_buy_body.html", {**buy_dialog_context(ctx.organization.pk), **extra}, status=status
    )
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _succeeded(request: HttpRequest, ctx: OrgContext, purchase: CreditPurchase) -> HttpResponse:
    # The overview's refresh (usage.views.overview_live) says it in the live status region once.
    request.session[SESSION_LIVE_NOTE] = str(purchase.credits)
    return _buy_body(
        request, ctx, added=purchase.credits, headers={"HX-Trigger": json.dumps({"dashboard:refresh": True})}
    )


def _outcome(
    request: HttpRequest, ctx: OrgContext, purchase: CreditPurchase, client_secret: str | None
) -> HttpResponse:
    if purchase.status == PurchaseStatus.SUCCEEDED:
        return _succeeded(request, ctx, purchase)
    if purchase.status == PurchaseStatus.REQUIRES_ACTION and client_secret:
        settle_url = reverse("org_buy_settle", kwargs={"org_id": ctx.organization.pk, "purchase_id": purchase.pk})
        return _buy_body(request, ctx, client_secret=client_secret, settle_url=settle_url, purchase=purchase)
    if purchase.status == PurchaseStatus.FAILED:
        return _buy_body(request, ctx, error=_(purchase.failure_message or "Your card was declined."))
    # pending (the outcome is not known yet): the sweep or the webhook settles it
    return _buy_body(request, ctx, pending=True)


@require_POST
@org_page(manage=True)
def buy(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Buy a pack with the card on file. The dialog's token is the purchase's request key: a second
    POST of the same form (a double click, a retry) returns that purchase and charges nothing."""
    pack_key = request.POST.get("pack", "")
    token = request.POST.get("token", "")
    if not pack_key or len(pack_key) > 64 or not BUY_TOKEN.match(token):
        return HttpResponseBadRequest(_("Choose a credit pack."))
    try:
        result = purchase_start(
            organization_id=ctx.organization.pk,
            pack_key=pack_key,
            now=clock_now(),
            actor_id=request.user.pk,
            request_key=f"dashboard:{token}",
            currency=billing_currency(organization_id=ctx.organization.pk),
        )
    except DomainError as exc:
        return _buy_body(request, ctx, error=_(exc.message))
    return _outcome(request, ctx, result.purchase, result.client_secret)


@require_POST
@org_page(manage=True)
def buy_settle(request: HttpRequest, ctx: OrgContext, purchase_id: int) -> HttpResponse:
    """After Stripe.js's 3-D Secure confirmation: settle the purchase from its PaymentIntent."""
    try:
        purchase = purchase_refresh(organization_id=ctx.organization.pk, purchase_id=purchase_id, now=clock_now())
    except (PaymentProviderError, PaymentRequestError) as exc:
        return _buy_body(request, ctx, error=_(exc.message))
    except DomainError as exc:
        raise Http404(exc.message) from exc
    if purchase.status == PurchaseStatus.REQUIRES_ACTION:
        return _buy_body(request, ctx, error=_("Your bank did not confirm this payment."))
    return _outcome(request, ctx, purchase, None)


@require_POST
@org_page(manage=True)
def card_setup(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """A SetupIntent's client secret for Stripe.js's confirmCardSetup."""
    try:
        setup = card_setup_start(organization_id=ctx.organization.pk, now=clock_now())
    except DomainError as exc:
        return JsonResponse({"error": _(exc.message)}, status=exc.status)
    return JsonResponse({"client_secret": setup.client_secret})


@require_POST
@org_page(manage=True)
def card_default(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """The card Stripe.js just set up becomes the one purchases charge; the dialog shows it."""
    payment_method = request.POST.get("payment_method", "")
    if not PAYMENT_METHOD_ID.match(payment_method):
        return _buy_body(request, ctx, error=_("The payment details were not accepted. Try another card."))
    try:
        card_set_default(organization_id=ctx.organization.pk, payment_method_id=payment_method, now=clock_now())
    except CardDeclinedError as exc:
        return _buy_body(request, ctx, error=_(exc.message))
    except DomainError as exc:
        return _buy_body(request, ctx, error=_(exc.message))
    # the payment methods page lists the new card at once
    return _buy_body(request, ctx, card_added=True, headers={"HX-Trigger": json.dumps({"cards:changed": True})})
