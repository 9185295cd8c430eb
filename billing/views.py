"""Dashboard pages about credits and plans, and the buy dialog's actions (thin: services do the work)."""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop
from django.views.decorators.http import require_POST

from accounts.models import User
from accounts.selectors import is_member
from accounts.views import OrgContext, org_page, render_org
from billing import stripe_gateway
from billing.forms import AutoTopUpForm
from billing.models import CreditAccount, CreditPurchase, PurchaseStatus, StripeCustomer
from billing.pricing import format_money
from billing.selectors import credit_account, ledger_entries, lots_open, packs_active
from billing.services.autotopup import auto_topup_configure, auto_topup_quote
from billing.services.provision import subscription_change
from billing.services.purchases import (
    card_remove,
    card_set_default,
    card_setup_start,
    cards_with_default,
    purchase_refresh,
    purchase_start,
)
from billing.services.renewals import subscription_upgrade
from billing.stripe_gateway import CardDeclinedError, PaymentProviderError, PaymentRequestError
from core.clock import now as clock_now
from core.errors import DomainError
from core.money import format_decimal
from plans.models import Plan
from plans.selectors import catalogue, plan_public_by_key, plans_public, subscription_for

LEDGER_PER_PAGE = 50


@org_page()
def credits_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return _credits_render(request, ctx)


def _credits_render(
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
            **_auto_topup_context(org_id, account, auto_form),
            # the refresh after a purchase from the dialog says it in the live status region
            "added": request.session.pop(SESSION_LIVE_NOTE, None) if request.headers.get("HX-Request") else None,
        },
        active="credits",
        status=status,
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
    plans = plans_public()
    if subscription and subscription.plan not in plans:
        plans.insert(0, subscription.plan)
    return render_org(
        request,
        ctx,
        "billing/plans.html",
        {
            "subscription": subscription,
            "rows": _plan_rows(plans),
            "bank_confirm": request.GET.get("bank") == "confirm",
        },
        active="plans",
    )


# billing.services.renewals' customer-facing sentences about plan changes, marked for translation.
_PLAN_MESSAGES = (
    gettext_noop("Add a card before choosing a paid plan."),
    gettext_noop("A payment for your plan is already in progress."),
)


@require_POST
@org_page(manage=True)
def plan_change(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Upgrade to a paid plan (charged now for a fresh period) or go back to the free default plan."""
    org_id = ctx.organization.pk
    plan_key = request.POST.get("plan", "")
    back = redirect("org_plans", org_id=org_id)
    plan = plan_public_by_key(plan_key)
    if plan is None:
        messages.error(request, _("Choose a plan."))
        return back
    when = clock_now()
    if plan.is_free:
        if not plan.is_default:
            messages.error(request, _("Choose a plan."))
            return back
        current = subscription_for(organization_id=org_id)
        if current is not None and current.plan_id == plan.pk:
            messages.info(request, _("You are already on the %(plan)s plan.") % {"plan": plan.name})
            return back
        try:
            subscription_change(organization_id=org_id, plan_key=plan.key, now=when)
        except DomainError as exc:
            messages.error(request, _(exc.message))
            return back
        messages.success(request, _("You are now on the %(plan)s plan.") % {"plan": plan.name})
        return back
    try:
        result = subscription_upgrade(organization_id=org_id, plan_key=plan.key, now=when, actor_id=request.user.pk)
    except DomainError as exc:
        messages.error(request, _(exc.message))
        return back
    status = result.purchase.status
    if status == PurchaseStatus.SUCCEEDED:
        messages.success(request, _("You are now on the %(plan)s plan.") % {"plan": plan.name})
    elif status == PurchaseStatus.REQUIRES_ACTION:
        # the plans page explains it, with a link to the credits page (cards live there)
        return redirect(reverse("org_plans", kwargs={"org_id": org_id}) + "?bank=confirm")
    elif status == PurchaseStatus.FAILED:
        messages.error(request, _(result.purchase.failure_message or "Your card was declined."))
    else:
        messages.info(request, _("Your payment is being processed. Your plan changes once it is paid."))
    return back


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


# The buy dialog ---------------------------------------------------------------------------------

# The live status region of the overview reads this once, after the refresh a purchase triggers.
SESSION_LIVE_NOTE = "live_note"
BUY_TOKEN = re.compile(r"^[0-9a-f]{32}$")
PAYMENT_METHOD_ID = re.compile(r"^pm_[A-Za-z0-9_]{1,200}$")

# The customer-facing sentences of billing.stripe_gateway and billing.services.purchases, marked
# here for translation (those modules stay free of gettext; the dialog translates what they say).
_SERVICE_MESSAGES = (
    gettext_noop("Your card was declined."),
    gettext_noop("Your card has insufficient funds."),
    gettext_noop("Your card has expired."),
    gettext_noop("Your card's security code is incorrect."),
    gettext_noop("Your card number is incorrect."),
    gettext_noop("Your card's expiration month is invalid."),
    gettext_noop("Your card's expiration year is invalid."),
    gettext_noop("An error occurred while processing your card. Try again in a moment."),
    gettext_noop("Your bank asks you to confirm this payment."),
    gettext_noop("Your bank did not confirm this payment."),
    gettext_noop("Your card was declined: its spending limit was reached."),
    gettext_noop("The payment was canceled."),
    gettext_noop("The payment details were not accepted. Try another card."),
    gettext_noop("We could not reach our payment provider. Try again in a moment."),
    gettext_noop("Add a card before buying credits."),
    gettext_noop("This card is not on file."),
)


def stripe_js_url() -> str:
    # With localstripe, its fake Stripe.js comes through us (see stripe_gateway.local_stripe_js).
    return reverse("stripe_js_local") if getattr(settings, "STRIPE_API_HOST", None) else "https://js.stripe.com/v3/"


def stripe_js_local(request: HttpRequest) -> HttpResponse:
    try:
        script = stripe_gateway.local_stripe_js()
    except DomainError as exc:
        raise Http404(exc.message) from None
    except OSError:
        return HttpResponse("/* localstripe is not answering */", content_type="text/javascript", status=503)
    return HttpResponse(script, content_type="text/javascript")


def stripe_publishable_key() -> str:
    return settings.STRIPE_LIVE_PUBLIC_KEY if settings.STRIPE_LIVE_MODE else settings.STRIPE_TEST_PUBLIC_KEY


def buy_dialog_context(organization_id: int) -> dict[str, Any]:
    """What templates/billing/_buy_dialog.html needs (the overview and the credits page use it)."""
    customer = StripeCustomer.objects.filter(organization_id=organization_id).first()
    return {
        "packs": list(packs_active()),
        "card": customer if customer is not None and customer.has_card else None,
        "buy_token": uuid.uuid4().hex,
        "stripe_js_url": stripe_js_url(),
        "stripe_key": stripe_publishable_key(),
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


# Auto top-up and payment methods --------------------------------------------------------------

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


def _auto_topup_currency(organization_id: int, account: CreditAccount | None) -> str:
    if account is not None and account.auto_topup_currency:
        return account.auto_topup_currency
    subscription = subscription_for(organization_id=organization_id)
    return subscription.plan.currency if subscription is not None else "usd"


def _auto_topup_context(
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
        "auto_form": form,
        "auto_enabled": bool(account and account.auto_topup_enabled),
        "auto_quote": {"credits": quote[0], "amount": quote[1], "currency": quote[2]} if quote else None,
        "auto_currency": currency,
    }


@require_POST
@org_page(manage=True)
def auto_topup_save(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Turn auto top-up on (with its settings) or off; only this form ever turns it on."""
    org_id = ctx.organization.pk
    account = credit_account(organization_id=org_id)
    form = AutoTopUpForm(request.POST, currency=_auto_topup_currency(org_id, account))
    if not form.is_valid():
        return _credits_render(request, ctx, auto_form=form, status=400)
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
        form.add_error(field if field in form.fields else None, _(exc.message))
        return _credits_render(request, ctx, auto_form=form, status=400)
    messages.success(request, _("Automatic top-up is on.") if enabled else _("Automatic top-up is off."))
    return redirect(reverse("org_credits", kwargs={"org_id": org_id}) + "#auto-topup")


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
