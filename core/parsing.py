"""Fast, strict parsing of API input (the hot path avoids DRF serializers; they document the schema)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils.dateparse import parse_datetime

from core.errors import DomainError
from core.money import parse_decimal


def invalid(field: str, message: str) -> DomainError:
    return DomainError(f"{field}: {message}", code="validation_error", field=field)


def require_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DomainError("The body must be a JSON object.", code="validation_error")
    return data


def get_int(data: dict[str, Any], field: str, *, required: bool = True, minimum: int | None = 1) -> int | None:
    value = data.get(field)
    if value is None:
        if required:
            raise invalid(field, "this field is required")
        return None
    if isinstance(value, bool):
        raise invalid(field, "must be an integer")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int):
        raise invalid(field, "must be an integer")
    if minimum is not None and value < minimum:
        raise invalid(field, f"must be at least {minimum}")
    if value > 2**62:
        raise invalid(field, "is too large")
    return value


def get_str(data: dict[str, Any], field: str, *, required: bool = True, max_length: int = 255) -> str | None:
    value = data.get(field)
    if value is None or value == "":
        if required:
            raise invalid(field, "this field is required")
        return None
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    value = value.strip()
    if len(value) > max_length:
        raise invalid(field, f"must be at most {max_length} characters")
    return value


def get_decimal(data: dict[str, Any], field: str, *, required: bool = True, sign: str = "positive") -> Decimal | None:
    """sign: "positive" (> 0), "nonnegative" (>= 0) or "nonzero" (adjustments)."""
    value = data.get(field)
    if value is None:
        if required:
            raise invalid(field, "this field is required")
        return None
    try:
        result = parse_decimal(value)
    except ValueError as exc:
        raise invalid(field, str(exc)) from None
    if sign == "positive" and result <= 0:
        raise invalid(field, "must be greater than zero")
    if sign == "nonnegative" and result < 0:
        raise invalid(field, "must not be negative")
    if sign == "nonzero" and result == 0:
        raise invalid(field, "must not be zero")
    return result


def get_datetime(data: dict[str, Any], field: str, *, required: bool = False) -> datetime | None:
    value = data.get(field)
    if value is None:
        if required:
            raise invalid(field, "this field is required")
        return None
    if not isinstance(value, str):
        raise invalid(field, "must be an ISO 8601 date-time string")
    try:
        parsed = parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise invalid(field, "must be an ISO 8601 date-time string")
    if parsed.tzinfo is None:
        raise invalid(field, "must include a time zone (e.g. Z or +09:00)")
    return parsed


def get_metadata(data: dict[str, Any], field: str = "metadata", *, max_bytes: int = 4096) -> dict[str, Any]:
    value = data.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(field, "must be a JSON object")
    if len(repr(value)) > max_bytes:
        raise invalid(field, f"must be at most {max_bytes} characters")
    return value
