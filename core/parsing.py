"""Fast, strict parsing of API input (the hot path avoids DRF serializers; they document the schema)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.utils.dateparse import parse_datetime
from rest_framework import exceptions, parsers

from core.errors import DomainError
from core.money import parse_decimal

# No request body needs more (a batch event's metadata sits four levels down); deeper ones are refused
# before anything walks them: Python's decoder and every recursive walk would raise RecursionError (a 500).
MAX_JSON_DEPTH = 32


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser with a bound on nesting: a body nested too deeply is a 400 malformed_json."""

    too_deep = f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels)."

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:  # Python's decoder gives up near sys.getrecursionlimit() levels
            raise exceptions.ParseError(self.too_deep) from None
        if _deeper_than(data, MAX_JSON_DEPTH):
            raise exceptions.ParseError(self.too_deep)
        return data


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels; iterative, so any depth is safe to walk."""
    stack = [(data, 1)] if isinstance(data, dict | list) else []
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def invalid(field: str, message: str) -> DomainError:
    return DomainError(f"{field}: {message}", code="validation_error", field=field)


def require_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DomainError("The body must be a JSON object.", code="validation_error")
    return data


MAX_INT = 2**62


def get_int(
    data: Any, field: str, *, required: bool = True, minimum: int | None = 1, maximum: int = MAX_INT
) -> int | None:
    value = data.get(field)
    if value is None:
        if required:
            raise invalid(field, "this field is required")
        return None
    if isinstance(value, bool):
        raise invalid(field, "must be an integer")
    if isinstance(value, str):
        text = value.strip()
        # ASCII digits only: str.isdigit() accepts "²", which int() rejects; and int() refuses very long strings.
        if not (text.isascii() and text.isdigit()):
            raise invalid(field, "must be an integer")
        if len(text.lstrip("0")) > len(str(MAX_INT)):
            raise invalid(field, "is too large")
        value = int(text)
    if not isinstance(value, int):
        raise invalid(field, "must be an integer")
    if minimum is not None and value < minimum:
        raise invalid(field, f"must be at least {minimum}")
    if value > maximum:
        raise invalid(field, "is too large" if maximum == MAX_INT else f"must be at most {maximum}")
    return value


def get_str(data: dict[str, Any], field: str, *, required: bool = True, max_length: int = 255) -> str | None:
    value = data.get(field)
    if value is None or value == "":
        if required:
            raise invalid(field, "this field is required")
        return None
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    if "\x00" in value:
        raise invalid(field, "must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"): no database can store it
            raise invalid(field, "must be valid Unicode") from None
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
    except ArithmeticError:  # decimal.InvalidOperation from quantize() on a number far too large
        raise invalid(field, "is too large") from None
    if sign == "positive" and result <= 0:
        raise invalid(field, "must be greater than zero")
    if sign == "nonnegative" and result < 0:
        raise invalid(field, "must not be negative")
    if sign == "nonzero" and result == 0:
        raise invalid(field, "must not be zero")
    return result


MIN_YEAR, MAX_YEAR = 1970, 9000


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
    # Stored as UTC: an offset must not carry the instant outside what Python (and psycopg) can read back.
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        parsed = None
    if parsed is None or not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise invalid(field, f"must be between the years {MIN_YEAR} and {MAX_YEAR}")
    return parsed


def get_metadata(data: dict[str, Any], field: str = "metadata", *, max_bytes: int = 4096) -> dict[str, Any]:
    value = data.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(field, "must be a JSON object")
    if len(repr(value)) > max_bytes:
        raise invalid(field, f"must be at most {max_bytes} characters")
    if _has_nul(value):  # PostgreSQL's jsonb refuses \u0000
        raise invalid(field, "must not contain NUL characters")
    try:  # nor does it take Infinity/NaN (DRF parses 1e400 as inf) or a lone surrogate ("\ud800")
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except (ValueError, UnicodeEncodeError):
        raise invalid(field, "must hold only finite numbers and valid Unicode") from None
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
