"""Stripe events that dj-stripe has verified (signature) and stored (idempotent on the event id).

Connected in BillingConfig.ready(). Handlers run inside dj-stripe's transaction: an exception rolls
the event back and Stripe retries. They only hand the event's object to a service.
"""

from __future__ import annotations

from typing import Any

from djstripe.event_handlers import djstripe_receiver

from billing import stripe_gateway
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
