"""Emails about money to the people who manage an organization's billing (owners, and admins who want them).

`billing_notice_add` writes a BillingNotice in the caller's transaction (the outbox);
`billing_notices_send` (a Celery beat task) emails the unsent ones, each once, in each reader's language.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from accounts.notifications import category_for_kind, emails_by_reader, reading_as
from accounts.selectors import notification_recipients_with_language
from billing.emails import billing_notice_text
from billing.models import BillingNotice, CreditPurchase

logger = logging.getLogger(__name__)


def billing_notice_add(
    *,
    organization_id: int,
    kind: str,
    dedupe_key: str,
    now: datetime,
    params: Mapping[str, Any] | None = None,
    subject: str = "",
    body: str = "",
    purchase: CreditPurchase | None = None,
) -> None:
    """Queue an email (a second one with the same dedupe key is dropped). Call inside the transaction
    that records what it tells.

    With `params` (JSON values, as billing.emails.billing_notice_text reads them for the kind), the
    email is written in each reader's language and time zone when sent, and its text is stored in the
    site's language and time zone for the admin; without, `subject` and `body` are sent as they are.
    """
    if params is not None:
        with reading_as(settings.LANGUAGE_CODE, settings.TIME_ZONE):
            subject, body = billing_notice_text(kind=kind, params=params)
    BillingNotice.objects.bulk_create(
        [
            BillingNotice(
                organization_id=organization_id,
                kind=kind,
                dedupe_key=dedupe_key[:120],
                subject=subject[:200],
                body=body,
                params=dict(params or {}),
                purchase=purchase,
                created_at=now,
            )
        ],
        ignore_conflicts=True,
    )


def billing_notices_send(*, now: datetime, limit: int = 200) -> int:
    """Email each unsent notice once, to the people who get its category (owners always get payment
    emails; admins unless they opted out), one email per (language, time zone) among them, each in its
    readers' language with times in their zone (a row without params goes once, as stored); returns how
    many notices were emailed. Rows are claimed with SKIP LOCKED and stamped in the same transaction, so
    two workers never send the same one, and a crash before commit leaves it for the next run.
    A notice the sender cannot write (a kind without a category or a message, as a newer release may
    store, or params it cannot read) is logged with its id and kind and stamped too, unsent, so it
    neither stops the others nor comes back every run."""
    sent = 0
    with transaction.atomic():
        notices = list(
            BillingNotice.objects.select_for_update(skip_locked=True)
            .filter(sent_at__isnull=True)
            .order_by("created_at", "id")[:limit]
        )
        if not notices:
            return 0
        recipients = notification_recipients_with_language(
            organization_ids={n.organization_id for n in notices},
            categories={c for n in notices if (c := category_for_kind(n.kind)) is not None},
        )
        for notice in notices:
            notice.sent_at = now
            category = category_for_kind(notice.kind)
            if category is None:
                logger.error("billing notice %s set aside unsent: kind %r has no category", notice.pk, notice.kind)
                continue
            people = recipients.get((notice.organization_id, category), [])
            if not people:
                continue
            if notice.params:
                try:  # every email is written before any is sent: a notice goes to all its readers or to none
                    emails = [
                        (*_billing_notice_text_for(notice, language, zone), to)
                        for (language, zone), to in emails_by_reader(people).items()
                    ]
                except (LookupError, ValueError, TypeError, ArithmeticError):
                    logger.exception(
                        "billing notice %s set aside unsent: kind %r could not be written", notice.pk, notice.kind
                    )
                    continue
            else:  # fixed text (or a row from before notices had params): once, as stored
                emails = [(notice.subject, notice.body, [p.email for p in people])]
            for subject, body, to in emails:
                send_mail(subject, body, None, to, fail_silently=False)
            sent += 1
        BillingNotice.objects.bulk_update(notices, ["sent_at"])
    return sent


def _billing_notice_text_for(notice: BillingNotice, language: str, zone: str) -> tuple[str, str]:
    with reading_as(language, zone):
        return billing_notice_text(kind=notice.kind, params=notice.params)
