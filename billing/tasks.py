from celery import shared_task

from billing import services
from core.clock import now


@shared_task(acks_late=True)
def lots_expire_due() -> int:
    return services.lots_expire_due(now=now())
