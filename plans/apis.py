"""Key verification: accounts owns keys, but the answer names the plan, so the view lives here
(imports point down: plans -> accounts)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors
from accounts.services import secret_hash
from core.errors import NotFound
from core.parsing import get_str, require_object
from core.permissions import IsServiceToken
from plans.selectors import subscription_for


class BearerAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents accounts.authentication.BearerAuthentication in the OpenAPI schema (registered on import)."""

    target_class = "accounts.authentication.BearerAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A service token (scope usage or admin) or a customer API key.",
        }


class KeyVerifyView(APIView):
    permission_classes = [IsServiceToken]

    @extend_schema(
        operation_id="key_verify",
        request=inline_serializer("KeyVerify", {"key": serializers.CharField()}),
        responses={
            200: inline_serializer(
                "KeyVerified",
                {
                    "organization": serializers.IntegerField(),
                    "organization_name": serializers.CharField(),
                    "key": serializers.DictField(),
                    "plan": serializers.CharField(allow_null=True, help_text="null when it has no subscription"),
                },
            )
        },
        summary="Which organization and plan a customer API key belongs to (404 if unknown or revoked)",
    )
    def post(self, request: Request) -> Response:
        secret = get_str(require_object(request.data), "key", max_length=200)
        assert secret is not None
        key = selectors.api_key_by_secret_hash(secret_hash(secret))
        if key is None:
            raise NotFound("This key is unknown or revoked.", code="key_not_found")
        subscription = subscription_for(organization_id=key.organization_id)
        return Response(
            {
                "organization": key.organization_id,
                "organization_name": key.organization.name,
                "key": {"id": key.pk, "name": key.name, "prefix": key.prefix},
                "plan": subscription.plan.key if subscription else None,
            }
        )
