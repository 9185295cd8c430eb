"""API plumbing shared by every app: the error envelope and the idempotency-key header."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import DomainError
from core.idempotency import run_once

IDEMPOTENCY_HEADER = "HTTP_IDEMPOTENCY_KEY"
MAX_IDEMPOTENCY_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"
API_PREFIX = "/api/"
IDEMPOTENCY_PARAM = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=True,
    description="Unique per operation (at most 255 characters); a retry with the same key returns the first answer.",
)


def error_response(code: str, message: str, status: int, **extra: Any) -> Response:
    return Response({"error": {"code": code, "message": message, **extra}}, status=status)


def _first_message(detail: Any) -> str:
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        inner = _first_message(value)
        return inner if key == "non_field_errors" else f"{key}: {inner}"
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error is {"error": {"code", "message", ...}} with a 4xx."""
    if isinstance(exc, DomainError):
        return Response({"error": exc.as_dict()}, status=exc.status)
    if isinstance(exc, exceptions.ValidationError):
        return error_response("validation_error", _first_message(exc.detail), 400, fields=exc.detail)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    codes = {
        401: "unauthenticated",
        403: "permission_denied",
        404: "not_found",
        405: "method_not_allowed",
        406: "not_acceptable",
        415: "unsupported_media_type",
        429: "throttled",
    }
    code = codes.get(response.status_code, "invalid_request")
    if isinstance(exc, exceptions.ParseError):
        code = "malformed_json"
    detail = getattr(exc, "detail", str(exc))
    response.data = {"error": {"code": code, "message": _first_message(detail)}}
    return response


def idempotency_key(request: Request) -> str:
    key = request.META.get(IDEMPOTENCY_HEADER, "").strip()
    if not key:
        raise DomainError(
            "This call changes state: send an Idempotency-Key header (any unique string per operation).",
            code="idempotency_key_missing",
        )
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise DomainError(
            f"The Idempotency-Key header may be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters.",
            code="idempotency_key_invalid",
        )
    if "\x00" in key:  # PostgreSQL text cannot hold NUL
        raise DomainError("The Idempotency-Key header must not contain NUL characters.", code="idempotency_key_invalid")
    return key


def once_response(
    *, scope: str, key: str, payload: Any, operation: Callable[[], tuple[int, dict[str, Any]]]
) -> Response:
    """run_once as a Response; a replay (the operation did not run) carries `Idempotent-Replayed: true`."""
    ran = False

    def tracked() -> tuple[int, dict[str, Any]]:
        nonlocal ran
        ran = True
        return operation()

    status, body = run_once(scope=scope, key=key, payload=payload, operation=tracked)
    response = Response(body, status=status)
    if not ran:
        response[REPLAYED_HEADER] = "true"
    return response


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def not_found_handler(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: the JSON error envelope under /api/, Django's page elsewhere."""
    if _is_api(request):
        return JsonResponse(
            {"error": {"code": "not_found", "message": f"There is no endpoint at {request.path}."}}, status=404
        )
    return defaults.page_not_found(request, exception)


def server_error_handler(request: HttpRequest) -> HttpResponse:
    """handler500: the JSON error envelope under /api/ (no detail leaks), Django's page elsewhere."""
    if _is_api(request):
        return JsonResponse(
            {"error": {"code": "server_error", "message": "Something went wrong on our side."}}, status=500
        )
    return defaults.server_error(request)
