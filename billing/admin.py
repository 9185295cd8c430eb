"""Admin for organizations, subscriptions and credits.

Organization and Subscription are registered here, not in accounts/plans: their pages show the
plan and balance and change them through billing's services, and lower apps may not import billing.
Lots and ledger entries are read-only; credits change only through the grant and adjust actions,
which confirm on an intermediate page and call billing.services with the operator and a reason.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core import signing
from django.db import transaction
from django.db.models import Q, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from accounts.models import Membership, Organization
from billing.forms import CreditAdjustForm, CreditGrantForm
from billing.models import (
    BillingNotice,
    CreditAccount,
    CreditLot,
    CreditPack,
    CreditPurchase,
    LedgerEntry,
    PurchaseStatus,
    StripeCustomer,
)
from billing.pricing import format_money
from billing.services import credits_adjust, credits_grant, spend_cap_set, subscription_change
from billing.services.purchases import ABANDON_UNKNOWN_AFTER, purchase_refund_unused, purchase_unused_refund_amount
from core import clock
from core.admin import FastChangeListMixin, ReadOnlyAdmin, admin_changelist_link, admin_id_link, admin_link
from core.errors import DomainError
from core.idempotency import request_fingerprint, run_once
from core.money import format_decimal
from plans.models import Subscription

MAX_ORGANIZATIONS_PER_ACTION = 100
_CONFIRM_SALT = "billing.admin.credits"
_CONFIRM_MAX_AGE = 3600  # seconds a preview stays confirmable


def _account(org: Organization) -> CreditAccount | None:
    try:
        return org.credit_account
    except CreditAccount.DoesNotExist:
        return None


def _subscription(org: Organization) -> Subscription | None:
    try:
        return org.subscription
    except Subscription.DoesNotExist:
        return None


class MembershipInline(admin.TabularInline):
    model = Membership
    fk_name = "organization"
    raw_id_fields = ("user",)
    extra = 0
    fields = ("user", "role", "created_at")
    readonly_fields = ("created_at",)


@admin.register(Organization)
class OrganizationAdmin(FastChangeListMixin, admin.ModelAdmin):
    list_display = ("id", "name", "is_personal", "plan", "balance", "timezone", "created_at")
    list_filter = ("is_personal", "subscription__plan", "subscription__status")
    list_select_related = ("subscription__plan", "credit_account")
    search_fields = ("name", "=memberships__user__email")
    ordering = ("-id",)
    fields = ("name", "timezone", "is_personal", "created_at", "plan_summary", "credits_summary")
    readonly_fields = ("is_personal", "created_at", "plan_summary", "credits_summary")
    inlines = (MembershipInline,)
    actions = ("grant_credits", "adjust_credits")

    # Organizations are provisioned through the API (POST /api/v1/organizations) or at sign-up, which
    # also opens their credit account and subscription; deleting one would delete its ledger.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Organization | None = None) -> bool:
        return False

    def has_credits_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("billing.add_creditlot")

    @admin.display(description=_("plan"), ordering="subscription__plan__sort_order")
    def plan(self, obj: Organization) -> str:
        sub = _subscription(obj)
        return sub.plan.name if sub is not None else "-"

    @admin.display(description=_("balance"), ordering="credit_account__balance")
    def balance(self, obj: Organization) -> str:
        account = _account(obj)
        return format_decimal(account.balance) if account is not None else "-"

    @admin.display(description=_("plan"))
    def plan_summary(self, obj: Organization) -> str:
        sub = _subscription(obj)
        if sub is None:
            return "-"
        return format_html(
            "{} ({}), periods anchored at {} UTC · {}",
            sub.plan.name,
            sub.get_status_display(),
            sub.anchor.strftime("%Y-%m-%d %H:%M"),
            admin_link(sub, str(_("change plan"))),
        )

    @admin.display(description=_("credits"))
    def credits_summary(self, obj: Organization) -> str:
        account = _account(obj)
        if account is None:
            return "-"
        cap = format_decimal(account.monthly_spend_cap) if account.monthly_spend_cap is not None else str(_("none"))
        links = format_html_join(
            " · ",
            "{}",
            (
                (admin_changelist_link("billing", "creditlot", str(_("lots")), organization__id__exact=obj.pk),),
                (admin_changelist_link("billing", "ledgerentry", str(_("ledger")), organization__id__exact=obj.pk),),
                (admin_changelist_link("usage", "usageevent", str(_("usage events")), organization__id__exact=obj.pk),),
                (admin_changelist_link("usage", "allowancewindow", str(_("windows")), organization__id__exact=obj.pk),),
            ),
        )
        return format_html(
            "Balance {} · monthly spend cap {} · spent this month {} · {}",
            format_decimal(account.balance),
            cap,
            format_decimal(account.spend_month_total),
            links,
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        return super().get_queryset(request).select_related("subscription__plan", "credit_account")

    # Credit actions ------------------------------------------------------------------------

    @admin.action(description=_("Grant credits…"), permissions=["credits"])
    def grant_credits(self, request: HttpRequest, queryset: QuerySet[Organization]) -> TemplateResponse | None:
        return self._credits_action(request, queryset, kind="grant")

    @admin.action(description=_("Adjust credits…"), permissions=["credits"])
    def adjust_credits(self, request: HttpRequest, queryset: QuerySet[Organization]) -> TemplateResponse | None:
        return self._credits_action(request, queryset, kind="adjust")

    def _credits_action(
        self, request: HttpRequest, queryset: QuerySet[Organization], *, kind: str
    ) -> TemplateResponse | None:
        """Three steps on one page: the form, a preview (balance -> new balance), then confirm.

        The confirm button carries a signed fingerprint of what was previewed; if the form changed
        since, the page previews again instead of acting. The nonce in it is the idempotency key,
        so a double-submitted confirmation changes nothing the second time.
        """
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: MAX_ORGANIZATIONS_PER_ACTION + 1])
        if len(ids) > MAX_ORGANIZATIONS_PER_ACTION:
            self.message_user(
                request,
                _("Select at most %(n)d organizations for a credit change.") % {"n": MAX_ORGANIZATIONS_PER_ACTION},
                messages.ERROR,
            )
            return None
        organizations = list(Organization.objects.filter(pk__in=ids).select_related("credit_account").order_by("pk"))
        now = clock.now()
        form_class = CreditGrantForm if kind == "grant" else CreditAdjustForm
        submitted = "_preview" in request.POST or "_confirm" in request.POST
        form = form_class(request.POST if submitted else None, now=now)
        confirm_token = ""
        delta: Decimal | None = None
        if submitted and form.is_valid():
            fingerprint = request_fingerprint({"kind": kind, "organizations": ids, **form.preview_payload()})
            if "_confirm" in request.POST:
                previewed = _confirm_token_load(request.POST.get("confirm_token", ""))
                if previewed is not None and previewed["fingerprint"] == fingerprint:
                    try:
                        self._credits_apply(request, organizations, form, kind=kind, nonce=previewed["nonce"], now=now)
                    except DomainError as exc:
                        form.add_error(None, exc.message)
                    else:
                        return None
                else:
                    self.message_user(
                        request,
                        _("The form changed since the preview: check the new preview, then confirm."),
                        messages.WARNING,
                    )
            if not form.errors:
                delta = form.delta()
                confirm_token = signing.dumps(
                    {"fingerprint": fingerprint, "nonce": uuid.uuid4().hex}, salt=_CONFIRM_SALT
                )
        rows = []
        for org in organizations:
            account = _account(org)
            current = account.balance if account is not None else None
            new = current + delta if current is not None and delta is not None else None
            rows.append(
                {
                    "organization": org,
                    "balance": current,
                    "new_balance": new,
                    "balance_text": format_decimal(current) if current is not None else "",
                    "new_balance_text": format_decimal(new) if new is not None else "",
                    "refused": new is not None and new < 0,
                }
            )
        title = _("Grant credits") if kind == "grant" else _("Adjust credits")
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "subtitle": None,
            "opts": self.opts,
            "kind": kind,
            "action": "grant_credits" if kind == "grant" else "adjust_credits",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "form": form,
            "rows": rows,
            "confirm_token": confirm_token,
            "any_refused": any(row["refused"] for row in rows),
            "media": self.media + form.media,
            "changelist_url": reverse("admin:accounts_organization_changelist"),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/accounts/organization/credits_action.html", context)

    def _credits_apply(
        self,
        request: HttpRequest,
        organizations: list[Organization],
        form: CreditGrantForm | CreditAdjustForm,
        *,
        kind: str,
        nonce: str,
        now: Any,
    ) -> None:
        """All or nothing: one transaction for every selected organization (locked in id order)."""
        data = form.cleaned_data
        actor_id = request.user.pk
        payload = {"actor": actor_id, **form.preview_payload()}
        with transaction.atomic():
            for org in organizations:
                if kind == "grant":

                    def operation(org_id: int = org.pk) -> tuple[int, dict[str, Any]]:
                        lot = credits_grant(
                            organization_id=org_id,
                            credits=data["credits"],
                            category=data["category"],
                            reason=data["reason"],
                            actor_id=actor_id,
                            expires_at=data["expires_at"],
                            priority=data["priority"],
                            now=now,
                        )
                        return 201, {"lot": lot.pk}

                else:

                    def operation(org_id: int = org.pk) -> tuple[int, dict[str, Any]]:
                        balance = credits_adjust(
                            organization_id=org_id,
                            credits=data["credits"],
                            reason=data["reason"],
                            actor_id=actor_id,
                            now=now,
                        )
                        return 200, {"balance": format_decimal(balance)}

                run_once(scope=f"admin.credits_{kind}", key=f"{nonce}:{org.pk}", payload=payload, operation=operation)
        credits = format_decimal(data["credits"])
        for org in organizations:
            self.log_change(request, org, f"{kind.capitalize()} {credits} credits: {data['reason']}")
        verb = _("Granted") if kind == "grant" else _("Adjusted by")
        self.message_user(
            request,
            _("%(verb)s %(credits)s credits for %(n)d organizations. Reason: %(reason)s")
            % {"verb": verb, "credits": credits, "n": len(organizations), "reason": data["reason"]},
            messages.SUCCESS,
        )


def _confirm_token_load(token: str) -> dict[str, str] | None:
    try:
        data = signing.loads(token, salt=_CONFIRM_SALT, max_age=_CONFIRM_MAX_AGE)
    except signing.BadSignature:
        return None
    return data if isinstance(data, dict) and "fingerprint" in data and "nonce" in data else None


@admin.register(Subscription)
class SubscriptionAdmin(FastChangeListMixin, admin.ModelAdmin):
    list_display = ("id", "organization", "plan", "status", "anchor", "updated_at")
    list_filter = ("plan", "status")
    list_select_related = ("organization", "plan")
    raw_id_fields = ("organization",)
    search_fields = ("^organization__name",)
    id_search_fields = ("pk", "organization_id")
    ordering = ("-id",)
    fields = ("organization", "plan", "status", "anchor", "created_at", "updated_at")
    readonly_fields = ("organization", "anchor", "created_at", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Subscription | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Subscription, form: ModelForm, change: bool) -> None:
        if "plan" in form.changed_data:
            # The plan changes under the organization's lock, with a fresh anchor (billing's service).
            subscription_change(organization_id=obj.organization_id, plan_key=obj.plan.key, now=clock.now())
            obj.refresh_from_db()
        else:
            super().save_model(request, obj, form, change)


@admin.register(CreditAccount)
class CreditAccountAdmin(FastChangeListMixin, admin.ModelAdmin):
    list_display = (
        "organization",
        "balance",
        "monthly_spend_cap",
        "spend_month",
        "spend_month_total",
        "next_lot_expiry",
        "updated_at",
    )
    list_select_related = ("organization",)
    raw_id_fields = ("organization",)
    search_fields = ("^organization__name",)
    id_search_fields = ("pk", "organization_id")
    ordering = ("-id",)
    fields = (
        "organization", "balance", "monthly_spend_cap", "spend_month", "spend_month_total",
        "next_lot_expiry", "next_hold_expiry", "auto_topup_enabled", "auto_topup_min_balance",
        "auto_topup_target_balance", "auto_topup_monthly_cap_amount", "auto_topup_currency", "auto_topup_failures",
        "auto_topup_last_charge_at", "updated_at",
    )  # fmt: skip
    readonly_fields = tuple(name for name in fields if name != "monthly_spend_cap")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: CreditAccount | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: CreditAccount, form: ModelForm, change: bool) -> None:
        # The balance is the sum of the lots; only the cap is editable, through the service and the lock.
        spend_cap_set(organization_id=obj.organization_id, cap=obj.monthly_spend_cap, now=clock.now())


@admin.register(CreditPack)
class CreditPackAdmin(FastChangeListMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "key",
        "name",
        "credits",
        "price_amount",
        "currency",
        "expires_after_days",
        "is_active",
        "sort_order",
    )
    list_filter = ("is_active", "currency")
    search_fields = ("key", "name")
    ordering = ("sort_order", "price_amount")


@admin.register(CreditLot)
class CreditLotAdmin(ReadOnlyAdmin):
    list_display = (
        "id", "created_at", "organization", "category", "source", "priority", "granted", "remaining",
        "effective_at", "expires_at", "external_ref", "actor", "reason",
    )  # fmt: skip
    list_filter = ("category", "source", ("expires_at", admin.EmptyFieldListFilter))
    list_select_related = ("organization", "actor")
    raw_id_fields = ("organization", "actor")
    search_fields = ("=external_ref", "^organization__name", "=actor__email")
    id_search_fields = ("pk", "organization_id")
    ordering = ("-id",)
    fields = (
        "organization", "category", "source", "priority", "granted", "remaining", "effective_at", "expires_at",
        "external_ref", "reason", "actor", "created_at", "entries_link",
    )  # fmt: skip
    readonly_fields = fields

    @admin.display(description=_("ledger entries"))
    def entries_link(self, obj: CreditLot) -> str:
        return admin_changelist_link("billing", "ledgerentry", str(_("entries of this lot")), lot__id__exact=obj.pk)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "created_at",
        "organization",
        "kind",
        "amount",
        "balance_after",
        "lot_link",
        "reference",
        "actor",
        "reason",
    )
    list_filter = ("kind", "created_at")
    list_select_related = ("organization", "actor")
    raw_id_fields = ("organization", "lot", "actor")
    # As for usage events: no search by organization name on the biggest table; a number is an id.
    search_fields = ("=reference", "=actor__email")
    id_search_fields = ("pk", "organization_id", "lot_id")
    ordering = ("-id",)
    fields = ("organization", "lot", "kind", "amount", "balance_after", "reference", "reason", "actor", "created_at")
    readonly_fields = fields

    @admin.display(description=_("lot"), ordering="lot_id")
    def lot_link(self, obj: LedgerEntry) -> str:
        return admin_id_link("billing", "creditlot", obj.lot_id)


class ReconciliationFilter(admin.SimpleListFilter):
    """Payments an operator should look at: failed ones, payments that do not match their purchase
    (never granted), and purchases Stripe has no payment for or that are still open after an hour
    (the reconciliation sweep could not settle them)."""

    title = _("reconciliation findings")
    parameter_name = "finding"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("failed", str(_("Failed"))),
            ("amount_mismatch", str(_("Amount mismatch"))),
            ("unmatched", str(_("Unmatched or still open after an hour"))),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[CreditPurchase]) -> QuerySet[CreditPurchase]:
        value = self.value()
        if value == "failed":
            return queryset.filter(status=PurchaseStatus.FAILED)
        if value == "amount_mismatch":
            return queryset.filter(failure_code="amount_mismatch")
        if value == "unmatched":
            stale = clock.now() - ABANDON_UNKNOWN_AFTER
            return queryset.filter(
                Q(failure_code="payment_not_found") | Q(status__in=CreditPurchase.OPEN_STATUSES, created_at__lte=stale)
            )
        return queryset


MAX_PURCHASES_PER_REFUND = 50
_REFUND_SALT = "billing.admin.refund"


@admin.register(CreditPurchase)
class CreditPurchaseAdmin(ReadOnlyAdmin):
    """Payments are written by billing's purchase services and Stripe's webhooks only. The one
    action, a refund of the unused credits, goes through a confirmation page listing what it does."""

    list_display = (
        "id", "created_at", "organization", "kind", "pack", "credits", "amount", "currency", "status",
        "failure_code", "payment_intent_id", "lot_link", "paid_at",
    )  # fmt: skip
    list_filter = (ReconciliationFilter, "status", "kind", "created_at")
    list_select_related = ("organization", "pack")
    raw_id_fields = ("organization", "pack", "lot", "actor", "subscription", "plan")
    search_fields = ("=payment_intent_id", "^organization__name")
    id_search_fields = ("pk", "organization_id", "lot_id")
    ordering = ("-id",)
    actions = ("refund_unused_credits",)

    @admin.display(description=_("lot"), ordering="lot_id")
    def lot_link(self, obj: CreditPurchase) -> str:
        return admin_id_link("billing", "creditlot", obj.lot_id)

    def has_refund_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("billing.add_creditlot")

    @admin.action(description=_("Refund unused credits…"), permissions=["refund"])
    def refund_unused_credits(
        self, request: HttpRequest, queryset: QuerySet[CreditPurchase]
    ) -> TemplateResponse | None:
        """Preview (each purchase, the money back and the credits taken back), then confirm.

        The confirm button carries a signed fingerprint of the preview; if a purchase changed since
        (a credit used, another refund), the page previews again instead of refunding. Stripe's
        idempotency key and the clawback keyed by refund id make a double submission refund once.
        """
        purchases = list(queryset.select_related("organization", "lot").order_by("pk")[: MAX_PURCHASES_PER_REFUND + 1])
        if len(purchases) > MAX_PURCHASES_PER_REFUND:
            self.message_user(
                request,
                _("Select at most %(n)d purchases to refund.") % {"n": MAX_PURCHASES_PER_REFUND},
                messages.ERROR,
            )
            return None
        now = clock.now()
        rows: list[dict[str, Any]] = []
        to_refund: list[tuple[CreditPurchase, int]] = []
        for purchase in purchases:
            amount = purchase_unused_refund_amount(purchase=purchase, now=now)
            if amount > 0:
                to_refund.append((purchase, amount))
            lot = purchase.lot
            remaining = lot.remaining if lot is not None else None
            expired = lot is not None and lot.expires_at is not None and lot.expires_at <= now
            rows.append(
                {
                    "purchase": purchase,
                    "amount": amount,
                    "paid_text": f"{format_money(purchase.amount, purchase.currency)} {purchase.currency.upper()}",
                    "refund_text": f"{format_money(amount, purchase.currency)} {purchase.currency.upper()}",
                    "credits_text": format_decimal(purchase.credits),
                    # Expired credits are not refunded, even before the expiry sweep has taken them.
                    "unused_text": (
                        str(_("expired")) if expired else format_decimal(remaining) if remaining is not None else ""
                    ),
                    "refundable": amount > 0,
                }
            )
        fingerprint = request_fingerprint([(purchase.pk, amount) for purchase, amount in to_refund])
        if "_confirm" in request.POST:
            try:
                previewed = signing.loads(
                    request.POST.get("confirm_token", ""), salt=_REFUND_SALT, max_age=_CONFIRM_MAX_AGE
                )
            except signing.BadSignature:
                previewed = None
            if previewed == fingerprint:
                self._refund(request, [purchase for purchase, _amount in to_refund], now=now)
                return None
            self.message_user(
                request, _("These purchases changed since the preview: check it again, then confirm."), messages.WARNING
            )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Refund unused credits"),
            "subtitle": None,
            "opts": self.opts,
            "action": "refund_unused_credits",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "rows": rows,
            "any_refundable": bool(to_refund),
            "confirm_token": signing.dumps(fingerprint, salt=_REFUND_SALT),
            "changelist_url": reverse("admin:billing_creditpurchase_changelist"),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/billing/creditpurchase/refund_action.html", context)

    def _refund(self, request: HttpRequest, purchases: list[CreditPurchase], *, now: datetime) -> None:
        """One Stripe refund per purchase, each on its own (a failure leaves the others refunded)."""
        for purchase in purchases:
            try:
                amount, credits = purchase_refund_unused(purchase_id=purchase.pk, now=now)
            except DomainError as exc:
                self.message_user(request, f"Purchase #{purchase.pk}: {exc.message}", messages.ERROR)
                continue
            money = f"{format_money(amount, purchase.currency)} {purchase.currency.upper()}"
            self.log_change(request, purchase, f"Refunded {money} for {format_decimal(credits)} unused credits")
            self.message_user(
                request,
                _("Purchase #%(id)d: refunded %(money)s; %(credits)s credits taken back.")
                % {"id": purchase.pk, "money": money, "credits": format_decimal(credits)},
                messages.SUCCESS,
            )


@admin.register(StripeCustomer)
class StripeCustomerAdmin(ReadOnlyAdmin):
    list_display = ("id", "organization", "customer_id", "card_brand", "card_last4", "created_at", "updated_at")
    list_select_related = ("organization",)
    raw_id_fields = ("organization",)
    search_fields = ("=customer_id", "^organization__name")
    id_search_fields = ("pk", "organization_id")
    ordering = ("-id",)


@admin.register(BillingNotice)
class BillingNoticeAdmin(ReadOnlyAdmin):
    """Emails about money (charges, failures, plan changes), written by billing's services."""

    list_display = ("id", "created_at", "organization", "kind", "subject", "purchase_link", "sent_at")
    list_filter = ("kind", ("sent_at", admin.EmptyFieldListFilter))
    list_select_related = ("organization",)
    raw_id_fields = ("organization", "purchase")
    search_fields = ("^organization__name", "=dedupe_key")
    id_search_fields = ("pk", "organization_id", "purchase_id")
    ordering = ("-id",)
    fields = ("organization", "kind", "subject", "body", "purchase", "dedupe_key", "created_at", "sent_at")
    readonly_fields = fields

    @admin.display(description=_("purchase"), ordering="purchase_id")
    def purchase_link(self, obj: BillingNotice) -> str:
        return admin_id_link("billing", "creditpurchase", obj.purchase_id)
