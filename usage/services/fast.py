"""Usage events decided and written by the database: the PostgreSQL functions in
usage/sql/record_fast_v2.sql (installed by migration usage 0006).

`usage_record_fast` takes one event, `usage_record_fast_batch` many, in rounds of one event per
organization. They decide the common case exactly as usage.services.engine does (lock the
organization's credit account, replay a stored answer or decide from windows and lots, write the
event, windows, lots, ledger, account and notices, answer), in one round trip: the lock is held for
one statement instead of across exchanges with Python deciding in between.

Whatever they do not cover comes back with status None, nothing written: a denial (worded for the
caller's role and language), a key reused with another body, a period window not yet opened (period
arithmetic lives in plans/periods.py), a due lot or hold expiry, an unknown organization or meter.
usage.services.record then runs the engine. tests/usage/test_record_fast.py holds the two to the
same answers and the same writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

from django.conf import settings
from django.db import connection
from django.utils.translation import get_language

from billing.services.book import SPEND_TOTAL_MAX
from plans.selectors import Catalogue, MeterInfo
from usage.services.notices import window_fields

if TYPE_CHECKING:
    from usage.services.record import UsageInput


class Answer(NamedTuple):
    status: int
    body: str  # JSON, with the event's id
    replayed: bool
    topup: bool  # the balance crossed the auto top-up minimum


class Batch(NamedTuple):
    answers: list[Answer | None]
    # Each organization's credit balance before the batch: the engine compares it with the balance
    # after, for the credits notices and auto top-up, when it decides the rest of the organization's events.
    balances_before: dict[int, Decimal]


_ONE = (
    "SELECT status, body, replayed, topup FROM usage_record_fast("
    "%s::bigint, %s::bigint, %s::text, %s::numeric, %s::numeric, %s::text, %s::text, %s::jsonb, %s::bigint,"
    " %s::timestamptz, %s::timestamptz, %s::jsonb, %s::numeric, %s::numeric)"
)
_MANY = (
    "SELECT idx, status, body, replayed, topup, start_balance"
    " FROM usage_record_fast_batch(%s::jsonb, %s::timestamptz, %s::jsonb, %s::numeric, %s::numeric)"
)


def fast_path_enabled() -> bool:
    return settings.USAGE_FAST_PATH and connection.vendor == "postgresql"


def record_one(*, item: UsageInput, digest: str, catalog: Catalogue, now: datetime) -> Answer | None:
    """Decide and write one event in one statement (autocommit: its own transaction), or None."""
    meter = catalog.meters_by_key.get(item.meter)
    if meter is None:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            _ONE,
            [
                item.organization_id,
                meter.id,
                meter.key,
                meter.credits_per_unit,
                item.quantity,
                item.idempotency_key,
                digest,
                json.dumps(item.metadata),
                item.user_id,
                item.occurred_at,
                now,
                _plans_for_meter(catalog, meter),
                Decimal(settings.CREDITS_LOW_THRESHOLD),
                SPEND_TOTAL_MAX,
            ],
        )
        status, body, replayed, topup = cursor.fetchone()
    return None if status is None else Answer(status, body, replayed, topup)


def record_many(*, items: Sequence[UsageInput], digests: Sequence[str], catalog: Catalogue, now: datetime) -> Batch:
    """Decide and write these events (inside the caller's transaction), one answer per event, in
    order; None for the events the engine must decide (in order, in the same transaction)."""
    meters: dict[int, MeterInfo] = {}
    events = []
    for item, digest in zip(items, digests, strict=True):
        meter = catalog.meters_by_key.get(item.meter)
        if meter is not None:
            meters[meter.id] = meter
        events.append(
            [
                item.organization_id,
                meter.id if meter is not None else 0,  # no such meter: the engine answers
                str(item.quantity),
                item.idempotency_key,
                digest,
                item.metadata,
                item.user_id,
                None if item.occurred_at is None else item.occurred_at.isoformat(),
            ]
        )
    meters_json = "{" + ",".join(f'"{m.id}": {_meter_json(catalog, m)}' for m in meters.values()) + "}"
    with connection.cursor() as cursor:
        cursor.execute(
            _MANY,
            [
                json.dumps(events),
                now,
                meters_json,
                Decimal(settings.CREDITS_LOW_THRESHOLD),
                SPEND_TOTAL_MAX,
            ],
        )
        rows = cursor.fetchall()
    answers: list[Answer | None] = [None] * len(items)
    balances: dict[int, Decimal] = {}
    for index, status, body, replayed, topup, start_balance in rows:
        if status is not None:
            answers[index - 1] = Answer(status, body, replayed, topup)
        if start_balance is not None:  # None: no credit account (the engine answers 404)
            balances[items[index - 1].organization_id] = start_balance
    return Batch(answers, balances)


def _meter_json(catalog: Catalogue, meter: MeterInfo) -> str:
    key = ("usage_record_fast_batch", meter.id, get_language() or settings.LANGUAGE_CODE)
    cached = catalog.memo.get(key)
    if cached is None:
        key_json = json.dumps(meter.key, ensure_ascii=False)
        head = json.dumps({"key": meter.key, "kj": key_json, "cpu": str(meter.credits_per_unit)})
        cached = catalog.memo[key] = head[:-1] + ', "plans": ' + _plans_for_meter(catalog, meter) + "}"
    assert isinstance(cached, str)
    return cached


def _plans_for_meter(catalog: Catalogue, meter: MeterInfo) -> str:
    """The functions' view of the catalogue for one meter (see the SQL file's header): every plan's
    key, whether it blocks credits for the meter, and the meter's allowances in the engine's order,
    with labels in the request's language. Cached with the catalogue, per meter and language."""
    key = ("usage_record_fast", meter.id, get_language() or settings.LANGUAGE_CODE)
    cached = catalog.memo.get(key)
    if cached is None:
        plans = {
            str(plan_id): {
                "key": plan.key,
                "kj": json.dumps(plan.key, ensure_ascii=False),
                "blocked": catalog.credits_blocked(plan_id, meter.id),
                "allowances": [
                    {
                        "id": allowance.id,
                        "limit": str(allowance.limit),
                        "kind": allowance.window_kind,
                        "seconds": allowance.window_seconds,
                        "label": allowance.label,
                        "site_label": window_fields(allowance.window_kind, allowance.window_seconds)["window"],
                        "head": _window_head(allowance.id, allowance.label, allowance.window_kind),
                    }
                    for allowance in catalog.allowances_for(plan_id, meter.id)
                ],
            }
            for plan_id, plan in catalog.plans_by_id.items()
        }
        cached = catalog.memo[key] = json.dumps(plans)
    assert isinstance(cached, str)
    return cached


def _window_head(allowance_id: int, label: str, kind: str) -> str:
    """The start of a window's JSON in an answer (engine.Slot.as_dict), encoded as the API encodes the
    engine's answers (DRF's JSONRenderer: UTF-8, not escaped); the functions append the window's
    figures and times."""
    label_json, kind_json = json.dumps(label, ensure_ascii=False), json.dumps(kind, ensure_ascii=False)
    return f'{{"allowance":{allowance_id},"window":{label_json},"kind":{kind_json},'
