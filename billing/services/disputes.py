"""Disputes (chargebacks) of a purchase's payment.

A dispute opened (`charge.dispute.created` / `funds_withdrawn`) takes back the unused part of the
purchase's lot, pro rata to the money disputed: one CLAWBACK entry, reference "dispute:<id>", so
every later delivery about the same dispute finds it and changes nothing. A dispute closed in our
favour (`won`, or an inquiry closed without a chargeback: `warning_closed`) gives back exactly what
was taken, as a new paid lot with external_ref "dispute-won:<id>" (unique per organization: once).

Known limit: a "won" delivery that arrives before the dispute's first one finds nothing taken and
restores nothing; the late "created" then takes credits that nothing gives back (an admin can).
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum

from billing.models import CreditLot, CreditPurchase, LedgerEntry, LotCategory, LotSource
from billing.services.book import credit_books_lock
from billing.services.grants import credits_grant
from core.money import ZERO, round_credits

logger = logging.getLogger(__name__)

# Closed statuses in which the customer's payment stays with us.
RESTORE_STATUSES = ("won", "warning_closed")


def _reference(dispute_id: str) -> str:
    return f"dispute:{dispute_id}"


@transaction.atomic
def purchase_dispute_record(
    *, payment_intent_id: str, dispute_id: str, dispute_amount: int, now: datetime
) -> Decimal | None:
    """Take back the unused part of the disputed purchase's lot (once per dispute id).

    Returns the credits taken back by this call (0 if an earlier delivery already did, or the lot is
    used up); None when the payment is not a credit purchase of ours.
    """
    purchase = CreditPurchase.objects.select_for_update().filter(payment_intent_id=payment_intent_id).first()
    if purchase is None or purchase.lot_id is None:
        return None
    org_id = purchase.organization_id
    reference = _reference(dispute_id)
    book = credit_books_lock([org_id], now=now)[org_id]  # the account lock orders concurrent deliveries
    if LedgerEntry.objects.filter(organization_id=org_id, reference=reference).exists():
        return ZERO
    lot = CreditLot.objects.get(pk=purchase.lot_id)
    share = round_credits(purchase.credits * Decimal(min(dispute_amount, purchase.amount)) / Decimal(purchase.amount))
    taken = book.claw_back(lot, share, reference=reference, reason=f"Dispute {dispute_id} of purchase #{purchase.pk}")
    book.flush()
    return taken


@transaction.atomic
def purchase_dispute_close(*, dispute_id: str, status: str, now: datetime) -> CreditLot | None:
    """A closed dispute: when won, give back what it took (a new paid lot, once per dispute id).

    Returns the restoring lot (also on a repeated delivery), or None when there is nothing to give
    back (lost, nothing taken, or the taken credits' lot has expired since: they would be gone now).
    """
    if status not in RESTORE_STATUSES:
        return None
    entries = LedgerEntry.objects.filter(reference=_reference(dispute_id)).select_related("lot")
    first = entries.order_by("id").first()
    if first is None:
        return None
    taken = -(entries.aggregate(total=Sum("amount"))["total"] or ZERO)
    if taken <= 0:
        return None
    source_lot = first.lot
    if source_lot.expires_at is not None and source_lot.expires_at <= now:
        logger.info("dispute %s won after its lot #%s expired: nothing restored", dispute_id, source_lot.pk)
        return None
    return credits_grant(
        organization_id=first.organization_id,
        credits=taken,
        now=now,
        category=LotCategory.PAID if source_lot.category == LotCategory.PAID else LotCategory.PROMOTIONAL,
        source=LotSource.ADJUSTMENT,
        reason=f"Dispute {dispute_id} won: credits restored",
        expires_at=source_lot.expires_at,
        external_ref=f"dispute-won:{dispute_id}",
    )
