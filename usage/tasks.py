"""Periodic tasks: thin, idempotent, safe to run twice or not at all."""

from celery import shared_task

from core.clock import now
from usage import rollups, services


@shared_task(acks_late=True)
def reservations_release_expired() -> int:
    return services.reservations_release_expired(now=now())


@shared_task(acks_late=True)
def windows_close_finished() -> int:
    return services.windows_close_finished(now=now())


@shared_task(acks_late=True)
def notices_send_pending() -> int:
    return services.notices_send_pending(now=now())


@shared_task(acks_late=True)
def daily_usage_rollup() -> int:
    return rollups.daily_usage_rollup(now=now())
