"""Reservations: hold allowance and credits for a long job, then commit the actual amount or release.

A hold takes from windows and lots exactly as a consumption would (HOLD ledger entries), so others
cannot use it. Commit gives everything back and consumes the actual amount in the same locked
transaction, taking what is available and recording the rest as a shortfall, never going negative.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction

from billing.models import EntryKind
from core.money import MAX_CREDITS, format_decimal
from usage.models import Decision, EventKind, Reservation, ReservationStatus, UsageEvent
from usage.services.engine import Engine, OrgState
from usage.services.record import (
    Outcome,
    UsageInput,
    decision_fields,
    denial,
    error_body,
    key_reused,
    not_found,
    request_hash,
    unknown_meter,
)


def reservation_body(reservation: Reservation) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": reservation.pk,
        "organization": reservation.organization_id,
        "status": reservation.status,
        "quantity": format_decimal(reservation.quantity),
        "from_allowance": format_decimal(reservation.from_allowance),
        "credits_held": format_decimal(reservation.credits_held),
        "expires_at": reservation.expires_at.isoformat(),
    }
    if reservation.committed_quantity is not None:
        body["committed_quantity"] = format_decimal(reservation.committed_quantity)
        body["shortfall_credits"] = format_decimal(reservation.shortfall or Decimal(0))
    if reservation.commit_event_id is not None:
        body["usage_event"] = reservation.commit_event_id
    return body


def reservation_create(*, item: UsageInput, ttl_seconds: int | None, now: datetime) -> Outcome:
    ttl = ttl_seconds or settings.RESERVATION_DEFAULT_TTL_SECONDS
    digest = request_hash(item, kind=f"reserve:{ttl}")
    with transaction.atomic():
        engine = Engine({item.organization_id}, now=now)
        st = engine.state(item.organization_id)
        if st is None:
            return not_found(item.organization_id)
        previous = Reservation.objects.filter(
            organization_id=item.organization_id, idempotency_key=item.idempotency_key
        ).first()
        if previous is not None:
            if previous.request_hash != digest:
                return key_reused()
            status = 402 if previous.status == ReservationStatus.DENIED else 201
            return Outcome(status, previous.response, True)
        meter = engine.catalogue.meters_by_key.get(item.meter)
        if meter is None:
            return unknown_meter(item.meter)
        ev = engine.evaluate(st, meter, item.quantity)
        reservation = Reservation(
            organization_id=st.organization_id,
            meter_id=meter.id,
            quantity=item.quantity,
            expires_at=now + timedelta(seconds=ttl),
            idempotency_key=item.idempotency_key,
            request_hash=digest,
            response={},
            created_at=now,
            spend_month=st.book.month,
        )
        if not ev.allowed:
            reservation.status = ReservationStatus.DENIED
            reservation.settled_at = now
            body = denial(engine, st, ev, user_id=item.user_id, now=now)
            reservation.save()
            body = {"id": reservation.pk, **body}
            reservation.response = body
            reservation.save(update_fields=["response"])
            engine.flush()
            return Outcome(402, body)
        drawn, entries = engine.apply(st, ev, kind=EntryKind.HOLD)
        reservation.from_allowance = ev.from_allowance
        reservation.credits_held = ev.credits
        reservation.held_windows = [
            {
                "allowance": slot.allowance.id,
                "start": slot.window.start.isoformat(),
                "amount": format_decimal(ev.from_allowance),
            }
            for slot in ev.slots
            if ev.from_allowance > 0
        ]
        reservation.held_lots = [{"lot": lot_id, "amount": format_decimal(amount)} for lot_id, amount in drawn]
        reservation.save()
        for entry in entries:
            entry.reference = f"reservation:{reservation.pk}"
        st.book.note_hold_expiry(reservation.expires_at)
        body = {**reservation_body(reservation), "decision": Decision.ALLOWED, **_windows_and_balance(st, ev, drawn)}
        reservation.response = body
        reservation.save(update_fields=["response"])
        engine.flush()
        return Outcome(201, body)


def _windows_and_balance(st: OrgState, ev: Any, drawn: list[tuple[int, Decimal]]) -> dict[str, Any]:
    fields = decision_fields(st, ev, drawn=drawn)
    return {
        "meter": fields["meter"],
        "windows": fields["windows"],
        "lots": fields["lots"],
        "credits": fields["credits"],
    }


def _committed_body(reservation: Reservation) -> dict[str, Any]:
    """The first commit's answer again: the reservation, plus the windows and credits its event stored."""
    stored: dict[str, Any] = {}
    if reservation.commit_event_id is not None:
        event = UsageEvent.objects.filter(pk=reservation.commit_event_id).values_list("response", flat=True).first()
        stored = event or {}
    fields: dict[str, Any] = {k: stored[k] for k in ("meter", "windows", "lots", "credits") if k in stored}
    return {**reservation_body(reservation), **fields}


def _locked_reservation(engine: Engine, organization_id: int, reservation_id: int) -> Reservation | None:
    return Reservation.objects.filter(pk=reservation_id, organization_id=organization_id).first()


def reservation_commit(*, organization_id: int, reservation_id: int, quantity: Decimal, now: datetime) -> Outcome:
    """Consume `quantity` (0 or more) against the hold. Committing twice with the same quantity
    returns the first answer; with another quantity, 409."""
    with transaction.atomic():
        engine = Engine({organization_id}, now=now)
        st = engine.state(organization_id)
        if st is None:
            return not_found(organization_id)
        # The engine may just have expired this hold lazily: read the state it left.
        reservation = next((r for r in engine.expired_holds if r.pk == reservation_id), None) or _locked_reservation(
            engine, organization_id, reservation_id
        )
        if reservation is None:
            return Outcome(404, error_body("reservation_not_found", f"There is no reservation {reservation_id}."))
        if reservation.status == ReservationStatus.COMMITTED:
            if reservation.committed_quantity == quantity:
                engine.flush()
                return Outcome(200, _committed_body(reservation), True)
            return Outcome(
                409,
                error_body(
                    "reservation_already_committed",
                    "This reservation was already committed with quantity "
                    f"{format_decimal(reservation.committed_quantity or Decimal(0))}.",
                ),
            )
        if reservation.status != ReservationStatus.HELD:
            engine.flush()
            return Outcome(
                409,
                error_body(
                    "reservation_not_held",
                    f"This reservation is {reservation.status}; only a held reservation can be committed.",
                ),
            )
        meter = engine.catalogue.meters_by_id.get(reservation.meter_id)
        if meter is None:
            return unknown_meter(str(reservation.meter_id))
        reference = f"reservation:{reservation.pk}"
        engine.release(st, reservation, reference=reference)
        ev = engine.evaluate(st, meter, quantity, partial=True)
        if ev.shortfall >= MAX_CREDITS:
            # Nothing is written: the release above changed only this engine's memory, and it is not flushed.
            return Outcome(
                400,
                error_body(
                    "validation_error",
                    "quantity: is too large: the credits it would owe cannot be recorded.",
                    field="quantity",
                ),
            )
        drawn, entries = engine.apply(st, ev)
        fields = decision_fields(st, ev, drawn=drawn)
        event = UsageEvent.objects.create(
            organization_id=organization_id,
            meter_id=meter.id,
            kind=EventKind.COMMIT,
            decision=Decision.ALLOWED,
            quantity=quantity,
            from_allowance=ev.from_allowance,
            credits_charged=ev.credits,
            idempotency_key=f"reservation:{reservation.pk}",
            request_hash="",
            http_status=200,
            response={"decision": Decision.ALLOWED, **fields, "shortfall_credits": format_decimal(ev.shortfall)},
            metadata={"reservation": reservation.pk},
            occurred_at=now,
            created_at=now,
        )
        for entry in entries:
            entry.reference = f"usage:{event.pk}"
        reservation.status = ReservationStatus.COMMITTED
        reservation.committed_quantity = quantity
        reservation.shortfall = ev.shortfall
        reservation.commit_event = event
        reservation.settled_at = now
        reservation.save(update_fields=["status", "committed_quantity", "shortfall", "commit_event", "settled_at"])
        engine.flush()
        return Outcome(200, {**reservation_body(reservation), **_windows_and_balance(st, ev, drawn)})


def reservation_release(*, organization_id: int, reservation_id: int, now: datetime) -> Outcome:
    """Free everything a hold took. Releasing twice returns the same answer."""
    with transaction.atomic():
        engine = Engine({organization_id}, now=now)
        st = engine.state(organization_id)
        if st is None:
            return not_found(organization_id)
        reservation = next((r for r in engine.expired_holds if r.pk == reservation_id), None) or _locked_reservation(
            engine, organization_id, reservation_id
        )
        if reservation is None:
            return Outcome(404, error_body("reservation_not_found", f"There is no reservation {reservation_id}."))
        if reservation.status in (ReservationStatus.RELEASED, ReservationStatus.EXPIRED):
            engine.flush()
            return Outcome(200, reservation_body(reservation), True)
        if reservation.status != ReservationStatus.HELD:
            return Outcome(
                409,
                error_body(
                    "reservation_not_held",
                    f"This reservation is {reservation.status}; only a held reservation can be released.",
                ),
            )
        engine.release(st, reservation, reference=f"reservation:{reservation.pk}")
        reservation.status = ReservationStatus.RELEASED
        reservation.settled_at = now
        reservation.save(update_fields=["status", "settled_at"])
        engine.flush()
        return Outcome(200, reservation_body(reservation))


def reservations_release_expired(*, now: datetime) -> int:
    """The sweep: release every hold past its expiry, one organization per transaction.
    The hot path does the same lazily, so a missed or doubled run changes nothing."""
    org_ids = list(
        Reservation.objects.filter(status=ReservationStatus.HELD, expires_at__lte=now)
        .values_list("organization_id", flat=True)
        .distinct()[:10_000]
    )
    for org_id in org_ids:
        with transaction.atomic():
            Engine({org_id}, now=now).flush()
    return len(org_ids)
