from celery import shared_task

from billing import services
from billing.services import autotopup, renewals
from billing.services import notices as notice_services
from billing.services import purchases as purchase_services
from core.clock import now


@shared_task(acks_late=True)
def lots_expire_due() -> int:
    return services.lots_expire_due(now=now())


@shared_task(acks_late=True)
def purchases_reconcile() -> int:
    """Settle open purchases older than a few minutes from Stripe's state (a missed webhook)."""
    return purchase_services.purchases_reconcile(now=now())


@shared_task(acks_late=True)
def auto_topup_run(organization_id: int) -> str:
    """Top up one organization if it needs it (enqueued on commit by the usage engine); idempotent:
    it decides again under the account lock, and one top-up at most is in flight."""
    return autotopup.auto_topup_run(organization_id=organization_id, now=now()).reason


@shared_task(acks_late=True)
def auto_topup_sweep() -> int:
    """Retries and catch-up: enqueue a run for every organization still below its minimum."""
    due = autotopup.auto_topup_due(now=now())
    for organization_id in due:
        auto_topup_run.delay(organization_id)
    return len(due)


@shared_task(acks_late=True)
def billing_notices_send() -> int:
    """Email the billing notices not sent yet (charges, failures, plan changes)."""
    return notice_services.billing_notices_send(now=now())


@shared_task(acks_late=True)
def renewals_run_due() -> int:
    """Charge paid subscriptions whose period has not been paid yet (once per period; retries)."""
    return renewals.renewals_run_due(now=now())
