"""Emails about money to the people who manage an organization's billing (owners, and admins who want them).

`billing_notice_add` writes a BillingNotice in the caller's transaction (the outbox);
`billing_notices_send` (a Celery beat task) emails the unsent ones, each once.
"""

from __future__ import annotations

from datetime import datetime

from django.core.mail import send_mail
from django.db import transaction

from accounts.notifications import category_for_kind
from accounts.selectors import notification_recipients
from billing.models import BillingNotice, CreditPurchase


def billing_notice_add(
    *,
    organization_id: int,
    kind: str,
    dedupe_key: str,
    subject: str,
    body: str,
    now: datetime,
    purchase: CreditPurchase | None = None,
) -> None:
    """Queue an email (a second one with the same dedupe key is dropped). Call inside the transaction
    that records what it tells."""
    BillingNotice.objects.bulk_create(
        [
            BillingNotice(
                organization_id=organization_id,
                kind=kind,
                dedupe_key=dedupe_key[:120],
                subject=subject[:200],
                body=body,
                purchase=purchase,
                created_at=now,
            )
        ],
        ignore_conflicts=True,
    )


def billing_notices_send(*, now: datetime, limit: int = 200) -> int:
    """Email each unsent notice once, to the people who get its category (owners always get payment
    emails; admins unless they opted out); returns how many were emailed. Rows are claimed with SKIP
    LOCKED and stamped in the same transaction, so two workers never send the same one, and a crash
    before commit leaves it for the next run."""
    sent = 0
    with transaction.atomic():
        notices = list(
            BillingNotice.objects.select_for_update(skip_locked=True)
            .filter(sent_at__isnull=True)
            .order_by("created_at", "id")[:limit]
        )
        if not notices:
            return 0
        recipients = notification_recipients(
            organization_ids={n.organization_id for n in notices},
            categories={category_for_kind(n.kind) for n in notices},
        )
        for notice in notices:
            to = recipients.get((notice.organization_id, category_for_kind(notice.kind)), [])
            if to:
                send_mail(notice.subject, notice.body, None, to, fail_silently=False)
                sent += 1
            notice.sent_at = now
        BillingNotice.objects.bulk_update(notices, ["sent_at"])
    return sent
