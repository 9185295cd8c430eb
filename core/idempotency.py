"""Replay for mutating calls that are not on the hot path (provisioning, grants, plan changes)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction

from core.errors import Unprocessable
from core.models import IdempotencyRecord


def request_fingerprint(payload: Any) -> str:
    """A short, stable hash of a request's meaning (keys sorted, decimals as strings)."""
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def key_reused() -> Unprocessable:
    return Unprocessable(
        "This Idempotency-Key was already used with a different request. Use a new key for a new operation.",
        code="idempotency_key_reused",
    )


def run_once(
    *, scope: str, key: str, payload: Any, operation: Callable[[], tuple[int, dict[str, Any]]]
) -> tuple[int, dict[str, Any]]:
    """Run `operation` at most once per (scope, key), in one transaction with its record.

    The operation returns (status, body); that pair is stored and returned again on a replay.
    A replay with another payload is refused with 422 idempotency_key_reused.
    """
    fingerprint = request_fingerprint(payload)
    for _attempt in range(2):
        existing = IdempotencyRecord.objects.filter(scope=scope, key=key).first()
        if existing is not None:
            if existing.request_hash != fingerprint:
                raise key_reused()
            return existing.http_status, existing.response
        try:
            with transaction.atomic():
                status, body = operation()
                IdempotencyRecord.objects.create(
                    scope=scope, key=key, request_hash=fingerprint, http_status=status, response=body
                )
                return status, body
        except IntegrityError:
            # A concurrent call with the same key won: its whole effect stands, ours rolled back.
            if not IdempotencyRecord.objects.filter(scope=scope, key=key).exists():
                raise
    raise AssertionError("unreachable")
