"""API plumbing shared by every app: the error envelope and the idempotency-key header."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import DomainError

IDEMPOTENCY_HEADER = "HTTP_IDEMPOTENCY_KEY"
MAX_IDEMPOTENCY_KEY_LENGTH = 255


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
        return error_response(
            "validation_error", _first_message(exc.detail), 400, fields=exc.detail
        )
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
    return key
