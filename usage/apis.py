"""The internal usage API: thin views that parse, check the organization, call one service."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.http import HttpResponse, HttpResponseBase
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder
from rest_framework.views import APIView

from core.api import IDEMPOTENCY_PARAM, idempotency_key
from core.clock import now
from core.errors import DomainError, NotFound
from core.parsing import get_datetime, get_decimal, get_int, get_metadata, get_str, require_object
from core.permissions import check_organization
from usage import selectors, services
from usage.services import Outcome, UsageInput

UsageRequestSchema = inline_serializer(
    "UsageRequest",
    {
        "organization": serializers.IntegerField(),
        "meter": serializers.CharField(),
        "quantity": serializers.DecimalField(max_digits=20, decimal_places=4),
        "occurred_at": serializers.DateTimeField(required=False),
        "metadata": serializers.DictField(required=False),
        "user": serializers.IntegerField(
            required=False, help_text="The acting user's id, to word a denial for their role"
        ),
    },
)
UsageBatchEventSchema = inline_serializer(
    "UsageBatchEvent",
    {
        "idempotency_key": serializers.CharField(max_length=255, help_text="Unique per event"),
        "organization": serializers.IntegerField(),
        "meter": serializers.CharField(),
        "quantity": serializers.DecimalField(max_digits=20, decimal_places=4),
        "occurred_at": serializers.DateTimeField(required=False),
        "metadata": serializers.DictField(required=False),
        "user": serializers.IntegerField(required=False),
    },
)
DecisionSchema = inline_serializer(
    "UsageDecision",
    {
        "id": serializers.IntegerField(),
        "decision": serializers.ChoiceField(["allowed", "denied"]),
        "from_allowance": serializers.CharField(),
        "credits_charged": serializers.CharField(),
        "windows": serializers.ListField(child=serializers.DictField()),
        "lots": serializers.ListField(child=serializers.DictField()),
        "credits": serializers.DictField(),
    },
)
ErrorSchema = inline_serializer("Error", {"error": serializers.DictField()})


def respond(outcome: Outcome) -> HttpResponseBase:
    response: HttpResponseBase
    if outcome.raw is not None:  # JSON the database wrote: sent as it is
        response = HttpResponse(outcome.raw, status=outcome.status, content_type="application/json")
    else:
        response = Response(outcome.body, status=outcome.status)
    if outcome.replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def parse_usage(data: Any, *, key: str) -> UsageInput:
    data = require_object(data)
    organization = get_int(data, "organization")
    meter = get_str(data, "meter", max_length=100)
    quantity = get_decimal(data, "quantity")
    assert organization is not None and meter is not None and quantity is not None
    return UsageInput(
        organization_id=organization,
        meter=meter,
        quantity=quantity,
        idempotency_key=key,
        occurred_at=get_datetime(data, "occurred_at"),
        metadata=get_metadata(data),
        user_id=get_int(data, "user", required=False),
    )


class UsageView(APIView):
    @extend_schema(
        operation_id="usage_record",
        request=UsageRequestSchema,
        responses={
            201: DecisionSchema,
            402: OpenApiResponse(ErrorSchema, description="limit_reached or spend_cap_reached"),
            422: ErrorSchema,
        },
        parameters=[IDEMPOTENCY_PARAM],
        summary="Record usage: allowed (201) with who paid, or denied (402) with nothing consumed",
    )
    def post(self, request: Request) -> HttpResponseBase:
        key = idempotency_key(request)
        item = parse_usage(request.data, key=key)
        check_organization(request, item.organization_id)
        return respond(services.usage_record(item=item, now=now()))


class UsageBatchView(APIView):
    @extend_schema(
        operation_id="usage_record_batch",
        request=inline_serializer(
            "UsageBatchRequest",
            {
                "events": serializers.ListField(
                    child=UsageBatchEventSchema, min_length=1, max_length=settings.USAGE_BATCH_MAX
                )
            },
        ),
        responses={
            200: inline_serializer(
                "UsageBatchResponse",
                {
                    "results": serializers.ListField(
                        child=inline_serializer(
                            "UsageBatchResult",
                            {
                                "index": serializers.IntegerField(),
                                "status": serializers.IntegerField(help_text="What POST /usage would have answered"),
                                "body": serializers.DictField(help_text="A decision, or an error envelope"),
                                "replayed": serializers.BooleanField(required=False),
                            },
                        )
                    )
                },
            )
        },
        summary="Record up to 1,000 events, each with its own idempotency_key; one result per event, in order",
    )
    def post(self, request: Request) -> HttpResponseBase:
        data = require_object(request.data)
        events = data.get("events")
        if not isinstance(events, list) or not events:
            raise DomainError("events: a non-empty list is required", code="validation_error", field="events")
        if len(events) > settings.USAGE_BATCH_MAX:
            raise DomainError(f"events: at most {settings.USAGE_BATCH_MAX} per batch", code="batch_too_large")
        items: list[UsageInput] = []
        results: list[dict[str, Any] | None] = []
        for index, raw in enumerate(events):
            try:
                raw = require_object(raw)
                key = get_str(raw, "idempotency_key")
                assert key is not None
                item = parse_usage(raw, key=key)
                check_organization(request, item.organization_id)
            except DomainError as exc:
                results.append({"index": index, "status": exc.status, "body": {"error": exc.as_dict()}})
                continue
            items.append(item)
            results.append(None)
        outcomes = iter(services.usage_record_batch(items=items, now=now()))
        # Written as text: most bodies are JSON the database wrote (usage.services.fast). As DRF's
        # renderer writes the other endpoints: compact, UTF-8 unescaped.
        out = []
        for index, result in enumerate(results):
            if result is not None:
                out.append(json.dumps(result, cls=JSONEncoder, separators=(",", ":"), ensure_ascii=False))
                continue
            outcome = next(outcomes)
            body = (
                outcome.raw
                if outcome.raw is not None
                else json.dumps(outcome.body, cls=JSONEncoder, separators=(",", ":"), ensure_ascii=False)
            )
            replayed = ',"replayed":true' if outcome.replayed else ""
            out.append(f'{{"index":{index},"status":{outcome.status},"body":{body}{replayed}}}')
        return HttpResponse('{"results":[' + ",".join(out) + "]}", content_type="application/json")


class AuthorizeView(APIView):
    @extend_schema(
        operation_id="usage_authorize",
        request=UsageRequestSchema,
        responses={200: inline_serializer("AuthorizeResponse", {"allowed": serializers.BooleanField()})},
        summary="Preflight: would this be allowed now, and from where? Consumes nothing",
    )
    def post(self, request: Request) -> HttpResponseBase:
        item = parse_usage(request.data, key="")
        check_organization(request, item.organization_id)
        return respond(
            services.usage_authorize(
                organization_id=item.organization_id,
                meter=item.meter,
                quantity=item.quantity,
                now=now(),
                user_id=item.user_id,
            )
        )


class ReservationCreateView(APIView):
    @extend_schema(
        operation_id="reservation_create",
        request=inline_serializer(
            "ReservationRequest",
            {
                "organization": serializers.IntegerField(),
                "meter": serializers.CharField(),
                "quantity": serializers.DecimalField(max_digits=20, decimal_places=4),
                "ttl_seconds": serializers.IntegerField(required=False),
            },
        ),
        parameters=[IDEMPOTENCY_PARAM],
        responses={
            201: inline_serializer(
                "Reservation", {"id": serializers.IntegerField(), "status": serializers.CharField()}
            ),
            402: ErrorSchema,
        },
        summary="Hold allowance and credits for a long job",
    )
    def post(self, request: Request) -> HttpResponseBase:
        key = idempotency_key(request)
        item = parse_usage(request.data, key=key)
        ttl = get_int(request.data, "ttl_seconds", required=False)
        if ttl is not None and ttl > settings.RESERVATION_MAX_TTL_SECONDS:
            raise DomainError(
                f"ttl_seconds: at most {settings.RESERVATION_MAX_TTL_SECONDS}",
                code="validation_error",
                field="ttl_seconds",
            )
        check_organization(request, item.organization_id)
        return respond(services.reservation_create(item=item, ttl_seconds=ttl, now=now()))


def _reservation_org(request: Request) -> int:
    organization = get_int(require_object(request.data), "organization")
    assert organization is not None
    check_organization(request, organization)
    return organization


class ReservationCommitView(APIView):
    @extend_schema(
        operation_id="reservation_commit",
        request=inline_serializer(
            "ReservationCommit",
            {
                "organization": serializers.IntegerField(),
                "quantity": serializers.DecimalField(max_digits=20, decimal_places=4),
            },
        ),
        parameters=[IDEMPOTENCY_PARAM],
        responses={
            200: inline_serializer("ReservationCommitted", {"id": serializers.IntegerField()}),
            409: ErrorSchema,
        },
        summary="Consume the actual amount; the rest of the hold is released",
    )
    def post(self, request: Request, reservation_id: int) -> HttpResponseBase:
        idempotency_key(request)
        organization = _reservation_org(request)
        quantity = get_decimal(require_object(request.data), "quantity", sign="nonnegative")
        assert quantity is not None
        return respond(
            services.reservation_commit(
                organization_id=organization, reservation_id=reservation_id, quantity=quantity, now=now()
            )
        )


class ReservationReleaseView(APIView):
    @extend_schema(
        operation_id="reservation_release",
        request=inline_serializer("ReservationRelease", {"organization": serializers.IntegerField()}),
        parameters=[IDEMPOTENCY_PARAM],
        responses={200: inline_serializer("ReservationReleased", {"id": serializers.IntegerField()}), 409: ErrorSchema},
        summary="Free everything a hold took",
    )
    def post(self, request: Request, reservation_id: int) -> HttpResponseBase:
        idempotency_key(request)
        organization = _reservation_org(request)
        return respond(
            services.reservation_release(organization_id=organization, reservation_id=reservation_id, now=now())
        )


class EntitlementsView(APIView):
    @extend_schema(
        operation_id="entitlements",
        responses={
            200: inline_serializer(
                "Entitlements",
                {
                    "plan": serializers.DictField(),
                    "meters": serializers.ListField(),
                    "credits": serializers.DictField(),
                },
            )
        },
        summary="Plan, every meter's windows, credit balance and lots",
    )
    def get(self, request: Request, organization_id: int) -> Response:
        check_organization(request, organization_id)
        data = selectors.entitlements(organization_id=organization_id, now=now())
        if data is None:
            raise NotFound(f"There is no organization {organization_id}.", code="organization_not_found")
        return Response(data)
