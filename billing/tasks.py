from celery import shared_task

from billing import services
from billing.services import purchases as purchase_services
from core.clock import now


@shared_task(acks_late=True)
def lots_expire_due() -> int:
    return services.lots_expire_due(now=now())


@shared_task(acks_late=True)
def purchases_reconcile() -> int:
    """Settle open purchases older than a few minutes from Stripe's state (a missed webhook)."""
    return purchase_services.purchases_reconcile(now=now())
