"""Stripe events that dj-stripe has verified (signature) and stored (idempotent on the event id).

Connected in BillingConfig.ready(). Handlers run inside dj-stripe's transaction: an exception rolls
the event back and Stripe retries. They only hand the event's object to a service.
"""

from __future__ import annotations

from typing import Any

from djstripe.event_handlers import djstripe_receiver

from billing import stripe_gateway
from billing.services.disputes import purchase_dispute_close, purchase_dispute_record
from billing.services.purchases import purchase_refund_record, purchase_settle
from core.clock import now


@djstripe_receiver(["payment_intent.succeeded", "payment_intent.payment_failed"])
def payment_intent_settle(sender: Any, event: Any, **kwargs: Any) -> None:
    """Settle the purchase the intent pays for (a no-op for intents that are not ours)."""
    purchase_settle(intent=stripe_gateway.intent_from_data(event.data["object"]), now=now())


@djstripe_receiver("charge.refunded")
def charge_refunded(sender: Any, event: Any, **kwargs: Any) -> None:
    """Take back the unused credits of each refund of a purchase's charge (keyed by refund id)."""
    charge = event.data["object"]
    intent = charge.get("payment_intent")
    intent_id = intent.get("id") if isinstance(intent, dict) else intent
    if not intent_id:
        return
    refunds = (charge.get("refunds") or {}).get("data") or []
    fully = int(charge.get("amount_refunded") or 0) >= int(charge["amount"])
    for refund in refunds:
        purchase_refund_record(
            payment_intent_id=intent_id,
            refund_id=refund["id"],
            refund_amount=int(refund["amount"]),
            fully_refunded=fully,
            now=now(),
        )


def _dispute_intent_id(dispute: Any) -> str | None:
    """The disputed payment intent: on the dispute itself (recent API versions), else its charge's."""
    intent = dispute.get("payment_intent")
    if isinstance(intent, dict):
        intent = intent.get("id")
    if intent:
        return str(intent)
    charge = dispute.get("charge")
    if isinstance(charge, dict):
        intent = charge.get("payment_intent")
        return str(intent.get("id") if isinstance(intent, dict) else intent) if intent else None
    return stripe_gateway.charge_payment_intent_id(charge=charge) if charge else None


@djstripe_receiver(["charge.dispute.created", "charge.dispute.funds_withdrawn"])
def charge_dispute_opened(sender: Any, event: Any, **kwargs: Any) -> None:
    """Take back the unused credits of a disputed purchase (once per dispute id)."""
    dispute = event.data["object"]
    intent_id = _dispute_intent_id(dispute)
    if not intent_id:
        return
    purchase_dispute_record(
        payment_intent_id=intent_id, dispute_id=dispute["id"], dispute_amount=int(dispute["amount"]), now=now()
    )


@djstripe_receiver(["charge.dispute.closed", "charge.dispute.funds_reinstated"])
def charge_dispute_closed(sender: Any, event: Any, **kwargs: Any) -> None:
    """A won dispute gives back what it took (once per dispute id); a lost one changes nothing."""
    dispute = event.data["object"]
    purchase_dispute_close(dispute_id=dispute["id"], status=str(dispute.get("status") or ""), now=now())
