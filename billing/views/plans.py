"""The plans page: compare plans, upgrade (charged now; 3-D Secure finished on this page with
Stripe.js) or move back to the free plan."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.views import OrgContext, org_page, render_org
from billing.models import PurchaseKind, PurchaseStatus
from billing.selectors import plan_upgrade_waiting, purchase_authentication_secret
from billing.services.provision import subscription_change
from billing.services.purchases import purchase_refresh
from billing.services.renewals import subscription_upgrade
from billing.stripe_gateway import PaymentProviderError, PaymentRequestError
from billing.views._common import stripe_js_context
from core.clock import now as clock_now
from core.errors import DomainError
from plans.models import Plan
from plans.selectors import catalogue, plan_public_by_key, plans_public, subscription_for


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
            # an upgrade whose payment waits for 3-D Secure: the page runs it with Stripe.js
            "upgrade_waiting": plan_upgrade_waiting(organization_id=ctx.organization.pk),
            **stripe_js_context(),
        },
        active="plans",
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
        # the plans page runs the bank's challenge at once (Stripe.js), then plan_settle finishes
        return redirect(reverse("org_plans", kwargs={"org_id": org_id}) + "?bank=confirm")
    elif status == PurchaseStatus.FAILED:
        messages.error(request, _(result.purchase.failure_message or "Your card was declined."))
    else:
        messages.info(request, _("Your payment is being processed. Your plan changes once it is paid."))
    return back


@require_POST
@org_page(manage=True)
def plan_authenticate(request: HttpRequest, ctx: OrgContext, purchase_id: int) -> HttpResponse:
    """The client secret for Stripe.js's confirmCardPayment of an upgrade waiting for the bank."""
    try:
        secret = purchase_authentication_secret(
            organization_id=ctx.organization.pk, purchase_id=purchase_id, kind=PurchaseKind.PLAN_UPGRADE
        )
    except DomainError as exc:
        return JsonResponse({"error": _(exc.message)}, status=exc.status)
    return JsonResponse({"client_secret": secret})


@require_POST
@org_page(manage=True)
def plan_settle(request: HttpRequest, ctx: OrgContext, purchase_id: int) -> HttpResponse:
    """After Stripe.js's 3-D Secure confirmation (whatever it said): settle the upgrade from its
    PaymentIntent; a succeeded one changes the plan (billing.services.renewals)."""
    back = redirect("org_plans", org_id=ctx.organization.pk)
    try:
        purchase = purchase_refresh(
            organization_id=ctx.organization.pk,
            purchase_id=purchase_id,
            now=clock_now(),
            kind=PurchaseKind.PLAN_UPGRADE,
        )
    except (PaymentProviderError, PaymentRequestError) as exc:
        messages.error(request, _(exc.message))
        return back
    except DomainError as exc:
        raise Http404(exc.message) from exc
    name = purchase.plan.name if purchase.plan is not None else ""
    if purchase.status == PurchaseStatus.SUCCEEDED:
        messages.success(request, _("You are now on the %(plan)s plan.") % {"plan": name})
    elif purchase.status == PurchaseStatus.REQUIRES_ACTION:
        messages.error(request, _("Your bank has not confirmed this payment yet, so your plan has not changed."))
    elif purchase.status == PurchaseStatus.FAILED:
        messages.error(request, _(purchase.failure_message or "Your card was declined."))
    else:
        messages.info(request, _("Your payment is being processed. Your plan changes once it is paid."))
    return back
