"""Admin and ledger API: thin views over billing services and selectors."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import selectors, services, stripe_gateway
from billing.models import CreditLot, CreditPurchase, LotCategory, PurchaseStatus
from billing.pricing import format_money
from billing.services import purchases
from billing.services.purchases import PurchaseResult, purchase_start
from core.api import IDEMPOTENCY_PARAM, REPLAYED_HEADER, idempotency_key, once_response
from core.clock import now
from core.errors import DomainError, NotFound
from core.money import format_decimal
from core.parsing import get_datetime, get_decimal, get_int, get_str, require_object
from core.permissions import IsAdminScope, check_organization

LEDGER_PAGE_MAX = 500
PRIORITY_MAX = 32767  # CreditLot.priority is a SmallIntegerField


def entry_dict(entry: Any) -> dict[str, Any]:
    return {
        "id": entry.pk,
        "kind": entry.kind,
        "amount": format_decimal(entry.amount),
        "balance_after": format_decimal(entry.balance_after),
        "lot": entry.lot_id,
        "lot_category": entry.lot.category,
        "reference": entry.reference,
        "reason": entry.reason,
        "actor": entry.actor_id,
        "created_at": entry.created_at.isoformat(),
    }


def lot_dict(lot: CreditLot) -> dict[str, Any]:
    return {
        "id": lot.pk,
        "organization": lot.organization_id,
        "category": lot.category,
        "source": lot.source,
        "priority": lot.priority,
        "granted": format_decimal(lot.granted),
        "remaining": format_decimal(lot.remaining),
        "effective_at": lot.effective_at.isoformat(),
        "expires_at": lot.expires_at.isoformat() if lot.expires_at else None,
        "reason": lot.reason,
    }


class LedgerView(APIView):
    @extend_schema(
        operation_id="ledger_list",
        parameters=[
            OpenApiParameter(
                "before", int, description="Return entries with id below this (the previous page's `next`)"
            ),
            OpenApiParameter("limit", int, description=f"Page size, at most {LEDGER_PAGE_MAX}"),
        ],
        responses={
            200: inline_serializer(
                "LedgerPage", {"data": serializers.ListField(), "next": serializers.IntegerField(allow_null=True)}
            )
        },
        summary="Ledger entries, newest first",
    )
    def get(self, request: Request, organization_id: int) -> Response:
        check_organization(request, organization_id)
        if selectors.credit_account(organization_id=organization_id) is None:
            raise NotFound(f"There is no organization {organization_id}.", code="organization_not_found")
        params = request.query_params
        limit = get_int(params, "limit", required=False) or 100
        before = get_int(params, "before", required=False)
        if limit > LEDGER_PAGE_MAX:
            raise DomainError(f"limit: at most {LEDGER_PAGE_MAX}", code="validation_error", field="limit")
        qs = selectors.ledger_entries(organization_id=organization_id)
        if before is not None:
            qs = qs.filter(pk__lt=before)
        rows = list(qs[: limit + 1])
        page = rows[:limit]
        return Response(
            {
                "data": [entry_dict(e) for e in page],
                "next": page[-1].pk if len(rows) > limit and page else None,
            }
        )


class GrantView(APIView):
    permission_classes = [IsAdminScope]

    @extend_schema(
        operation_id="credits_grant",
        parameters=[IDEMPOTENCY_PARAM],
        request=inline_serializer(
            "GrantRequest",
            {
                "credits": serializers.DecimalField(max_digits=20, decimal_places=4),
                "reason": serializers.CharField(),
                "expires_at": serializers.DateTimeField(required=False),
                "priority": serializers.IntegerField(required=False),
                "category": serializers.ChoiceField(LotCategory.values, required=False),
            },
        ),
        responses={201: inline_serializer("Lot", {"id": serializers.IntegerField()})},
        summary="Grant credits (admin)",
    )
    def post(self, request: Request, organization_id: int) -> Response:
        key = idempotency_key(request)
        data = require_object(request.data)
        credits = get_decimal(data, "credits")
        reason = get_str(data, "reason", max_length=500)
        expires_at = get_datetime(data, "expires_at")
        priority = get_int(data, "priority", required=False, minimum=-1000, maximum=PRIORITY_MAX)
        if priority is None:  # not `or 100`: 0 is a valid priority
            priority = 100
        category = get_str(data, "category", required=False) or LotCategory.PROMOTIONAL
        if category not in LotCategory.values:
            raise DomainError("category: must be promotional or paid", code="validation_error", field="category")
        assert credits is not None and reason is not None

        def grant() -> tuple[int, dict[str, Any]]:
            lot = services.credits_grant(
                organization_id=organization_id,
                credits=credits,
                now=now(),
                category=category,
                reason=reason,
                expires_at=expires_at,
                priority=priority,
                external_ref=f"api:{key}",
            )
            return 201, lot_dict(lot)

        return once_response(scope=f"grants:{organization_id}", key=key, payload=data, operation=grant)


class OrganizationCreateView(APIView):
    permission_classes = [IsAdminScope]

    @extend_schema(
        operation_id="organization_create",
        parameters=[IDEMPOTENCY_PARAM],
        request=inline_serializer(
            "OrganizationCreate",
            {
                "name": serializers.CharField(),
                "owner_email": serializers.EmailField(),
                "plan": serializers.CharField(required=False),
                "timezone": serializers.CharField(required=False),
            },
        ),
        responses={
            201: inline_serializer("Organization", {"id": serializers.IntegerField(), "name": serializers.CharField()})
        },
        summary="Provision an organization (admin)",
    )
    def post(self, request: Request) -> Response:
        key = idempotency_key(request)
        data = require_object(request.data)
        name = get_str(data, "name", max_length=200)
        email = get_str(data, "owner_email", max_length=254)
        plan = get_str(data, "plan", required=False, max_length=64)
        tz = get_str(data, "timezone", required=False, max_length=64) or "UTC"
        assert name is not None and email is not None
        try:
            serializers.EmailField().run_validation(email)
        except serializers.ValidationError:
            raise DomainError(
                "owner_email: must be an email address", code="validation_error", field="owner_email"
            ) from None
        _check_timezone(tz)

        def provision() -> tuple[int, dict[str, Any]]:
            org = services.organization_provision(name=name, owner_email=email, plan_key=plan, now=now(), timezone=tz)
            sub = org.subscription
            return 201, {
                "id": org.pk,
                "name": org.name,
                "owner_email": email.lower(),
                "plan": sub.plan.key,
                "timezone": org.timezone,
                "period_anchor": sub.anchor.isoformat(),
            }

        return once_response(scope="organizations.create", key=key, payload=data, operation=provision)


def _check_timezone(tz: str) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise DomainError("timezone: not a known IANA time zone", code="validation_error", field="timezone") from None


class SubscriptionView(APIView):
    permission_classes = [IsAdminScope]

    @extend_schema(
        operation_id="subscription_change",
        parameters=[IDEMPOTENCY_PARAM],
        request=inline_serializer("SubscriptionChange", {"plan": serializers.CharField()}),
        responses={200: inline_serializer("Subscription", {"plan": serializers.CharField()})},
        summary="Change an organization's plan (admin); the new plan's periods start now",
    )
    def put(self, request: Request, organization_id: int) -> Response:
        key = idempotency_key(request)
        data = require_object(request.data)
        plan = get_str(data, "plan", max_length=64)
        assert plan is not None

        def change() -> tuple[int, dict[str, Any]]:
            sub = services.subscription_change(organization_id=organization_id, plan_key=plan, now=now())
            return 200, {
                "organization": organization_id,
                "plan": sub.plan.key,
                "status": sub.status,
                "period_anchor": sub.anchor.isoformat(),
            }

        return once_response(scope=f"subscription:{organization_id}", key=key, payload=data, operation=change)


class SpendCapView(APIView):
    permission_classes = [IsAdminScope]

    @extend_schema(
        operation_id="spend_cap_set",
        parameters=[IDEMPOTENCY_PARAM],
        request=inline_serializer("SpendCap", {"monthly_spend_cap": serializers.CharField(allow_null=True)}),
        responses={
            200: inline_serializer("SpendCapSet", {"monthly_spend_cap": serializers.CharField(allow_null=True)})
        },
        summary="Set or clear the monthly credit spend cap (admin)",
    )
    def put(self, request: Request, organization_id: int) -> Response:
        key = idempotency_key(request)
        data = require_object(request.data)
        cap = get_decimal(data, "monthly_spend_cap", required=False, sign="nonnegative")

        def set_cap() -> tuple[int, dict[str, Any]]:
            account = services.spend_cap_set(organization_id=organization_id, cap=cap, now=now())
            cap_value = account.monthly_spend_cap
            return 200, {
                "organization": organization_id,
                "monthly_spend_cap": None if cap_value is None else format_decimal(cap_value),
            }

        # A late retry must not overwrite a newer cap: a replay answers from the record, it does not set again.
        return once_response(scope=f"spend-cap:{organization_id}", key=key, payload=data, operation=set_cap)


RECEIPTS_PAGE_MAX = 100


def purchase_dict(purchase: CreditPurchase) -> dict[str, Any]:
    return {
        "id": purchase.pk,
        "organization": purchase.organization_id,
        "kind": purchase.kind,
        "pack": purchase.pack.key if purchase.pack is not None else None,
        "status": purchase.status,
        "credits": format_decimal(purchase.credits),
        "amount": purchase.amount,
        "amount_decimal": format_money(purchase.amount, purchase.currency),
        "currency": purchase.currency,
        "card_brand": purchase.card_brand,
        "card_last4": purchase.card_last4,
        "failure_code": purchase.failure_code or None,
        "failure_message": purchase.failure_message or None,
        "created_at": purchase.created_at.isoformat(),
        "paid_at": purchase.paid_at.isoformat() if purchase.paid_at else None,
    }


def purchase_response(result: PurchaseResult, organization_id: int) -> Response:
    """201 paid (with the new balance), 202 waiting (3-D Secure: with the client secret for
    Stripe.js; or an outcome still unknown), 402 declined (the card's reason, for the customer)."""
    purchase = result.purchase
    body = purchase_dict(purchase)
    if purchase.status == PurchaseStatus.FAILED:
        response = Response(
            {
                "error": {
                    "code": purchase.failure_code or "card_declined",
                    "message": purchase.failure_message or "Your card was declined.",
                    "purchase": body,
                }
            },
            status=402,
        )
    elif purchase.status in (PurchaseStatus.SUCCEEDED, PurchaseStatus.REFUNDED):
        account = selectors.credit_account(organization_id=organization_id)
        body["balance"] = format_decimal(account.balance) if account is not None else None
        response = Response(body, status=201)
    else:
        body["client_secret"] = result.client_secret
        response = Response(body, status=202)
    if result.replayed:
        response[REPLAYED_HEADER] = "true"
    return response


class PurchasesView(APIView):
    """Buy a credit pack with the card on file (customer key of the organization, or a service
    token), and list the organization's receipts."""

    @extend_schema(
        operation_id="purchases_list",
        parameters=[
            OpenApiParameter("before", int, description="Receipts with id below this (the previous page's `next`)"),
            OpenApiParameter("limit", int, description=f"Page size, at most {RECEIPTS_PAGE_MAX}"),
        ],
        responses={
            200: inline_serializer(
                "ReceiptPage", {"data": serializers.ListField(), "next": serializers.IntegerField(allow_null=True)}
            )
        },
        summary="Receipts: paid packs, auto top-ups, plan upgrades and renewals, newest first",
    )
    def get(self, request: Request, organization_id: int) -> Response:
        check_organization(request, organization_id)
        if selectors.credit_account(organization_id=organization_id) is None:
            raise NotFound(f"There is no organization {organization_id}.", code="organization_not_found")
        params = request.query_params
        limit = get_int(params, "limit", required=False, minimum=1) or 50
        before = get_int(params, "before", required=False)
        if limit > RECEIPTS_PAGE_MAX:
            raise DomainError(f"limit: at most {RECEIPTS_PAGE_MAX}", code="validation_error", field="limit")
        rows = selectors.receipts_for(organization_id=organization_id, limit=limit + 1, before=before)
        page = rows[:limit]
        return Response({"data": page, "next": page[-1]["id"] if len(rows) > limit and page else None})

    @extend_schema(
        operation_id="purchase_create",
        parameters=[IDEMPOTENCY_PARAM],
        request=inline_serializer("PurchaseRequest", {"pack": serializers.CharField()}),
        responses={
            201: inline_serializer("Purchase", {"id": serializers.IntegerField(), "status": serializers.CharField()}),
            202: inline_serializer("PurchasePending", {"client_secret": serializers.CharField(allow_null=True)}),
        },
        summary="Buy a credit pack with the card on file; a retry with the same Idempotency-Key charges once."
        " Only packs in the organization's billing currency (422 pack_currency_mismatch otherwise)",
    )
    def post(self, request: Request, organization_id: int) -> Response:
        check_organization(request, organization_id)
        key = idempotency_key(request)
        data = require_object(request.data)
        pack = get_str(data, "pack", max_length=64)
        assert pack is not None
        if selectors.credit_account(organization_id=organization_id) is None:
            raise NotFound(f"There is no organization {organization_id}.", code="organization_not_found")
        result = purchase_start(
            organization_id=organization_id,
            pack_key=pack,
            now=now(),
            request_key=key,
            currency=selectors.billing_currency(organization_id=organization_id),
        )
        return purchase_response(result, organization_id)


# Card on file (the dashboard's Stripe.js flow: setup -> confirmCardSetup -> set default) ---------


def _organization_checked(request: Request, organization_id: int) -> None:
    check_organization(request, organization_id)
    if selectors.credit_account(organization_id=organization_id) is None:
        raise NotFound(f"There is no organization {organization_id}.", code="organization_not_found")


def card_dict(card: stripe_gateway.Card, default_id: str) -> dict[str, Any]:
    return {
        "id": card.id,
        "brand": card.brand,
        "last4": card.last4,
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
        "default": card.id == default_id,
    }


CARD_SCHEMA = inline_serializer(
    "Card",
    {
        "id": serializers.CharField(),
        "brand": serializers.CharField(),
        "last4": serializers.CharField(),
        "exp_month": serializers.IntegerField(allow_null=True),
        "exp_year": serializers.IntegerField(allow_null=True),
        "default": serializers.BooleanField(),
    },
)


class CardsView(APIView):
    @extend_schema(
        operation_id="cards_list",
        responses={200: inline_serializer("CardList", {"data": serializers.ListField(child=CARD_SCHEMA)})},
        summary="The organization's cards on file; `default` is the one purchases charge",
    )
    def get(self, request: Request, organization_id: int) -> Response:
        _organization_checked(request, organization_id)
        cards, default_id = selectors.cards_with_default(organization_id=organization_id)
        return Response({"data": [card_dict(card, default_id) for card in cards]})


class CardSetupView(APIView):
    @extend_schema(
        operation_id="card_setup",
        parameters=[IDEMPOTENCY_PARAM],
        request=None,
        responses={
            201: inline_serializer(
                "CardSetup",
                {
                    "setup_intent": serializers.CharField(),
                    "client_secret": serializers.CharField(),
                    "publishable_key": serializers.CharField(),
                },
            )
        },
        summary="Start adding a card: a SetupIntent's client secret for Stripe.js confirmCardSetup",
    )
    def post(self, request: Request, organization_id: int) -> Response:
        _organization_checked(request, organization_id)
        key = idempotency_key(request)
        # The customer first, outside the replay record's transaction: a failure after Stripe created it
        # must not roll back our row of it.
        purchases.stripe_customer_ensure(organization_id=organization_id, now=now())

        def setup() -> tuple[int, dict[str, Any]]:
            started = purchases.card_setup_start(organization_id=organization_id, now=now())
            return 201, {
                "setup_intent": started.setup_intent_id,
                "client_secret": started.client_secret,
                "publishable_key": stripe_gateway.publishable_key(),
            }

        return once_response(scope=f"cards.setup:{organization_id}", key=key, payload={}, operation=setup)


class CardDefaultView(APIView):
    @extend_schema(
        operation_id="card_set_default",
        parameters=[IDEMPOTENCY_PARAM],
        request=None,
        responses={200: CARD_SCHEMA},
        summary="Make this card (confirmed with Stripe.js) the one purchases charge; repeating it changes nothing",
    )
    def post(self, request: Request, organization_id: int, payment_method_id: str) -> Response:
        _organization_checked(request, organization_id)
        idempotency_key(request)  # required on every POST; setting the same default again is harmless
        customer = purchases.card_set_default(
            organization_id=organization_id, payment_method_id=payment_method_id, now=now()
        )
        cards, default_id = selectors.cards_with_default(organization_id=organization_id)
        card = next((c for c in cards if c.id == default_id), None)
        if card is None:  # removed meanwhile by another call
            card = stripe_gateway.Card(id=default_id, brand=customer.card_brand, last4=customer.card_last4)
        return Response(card_dict(card, default_id))


class CardDetailView(APIView):
    @extend_schema(
        operation_id="card_remove", request=None, responses={204: None}, summary="Remove a card from the organization"
    )
    def delete(self, request: Request, organization_id: int, payment_method_id: str) -> Response:
        _organization_checked(request, organization_id)
        purchases.card_remove(organization_id=organization_id, payment_method_id=payment_method_id, now=now())
        return Response(status=204)
