"""Usage notices: created once per dedupe key (a unique constraint), emailed once to those who want them."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import translation

from accounts.notifications import category_for_kind
from accounts.selectors import notification_recipients
from core.money import format_decimal
from plans.models import PlanAllowance
from plans.selectors import catalogue
from usage.messages import when
from usage.models import AllowanceWindow, Notice, NoticeKind


def notice_text(notice: Notice) -> tuple[str, str]:
    """Subject and body of a notice's email, in words (payload keys as stored by the engine and sweep)."""
    p = notice.payload
    meter = p.get("meter")
    if meter is None and "meter_id" in p:
        info = catalogue().meters_by_id.get(int(p["meter_id"]))
        meter = info.name if info else ""
    overview = f"{settings.PUBLIC_BASE_URL}/orgs/{notice.organization_id}/"
    credits = f"{settings.PUBLIC_BASE_URL}/orgs/{notice.organization_id}/credits/"
    if notice.kind == NoticeKind.WINDOW_THRESHOLD:
        subject = f"You have used {p['percent']}% of your {p['window']} allowance for {meter}"
        body = (
            f"Your organization has used {p['percent']}% of its {p['window']} allowance for {meter} "
            f"(limit {p['limit']}). It resets at {_when(p.get('resets_at'))}.\n\n"
            f"Past the allowance, usage is paid with credits. See your usage: {overview}"
        )
    elif notice.kind == NoticeKind.ALLOWANCE_RESET:
        subject = f"Your {p['window']} allowance for {meter} has reset"
        body = (
            f"Your {p['window']} allowance for {meter} reset at {_when(p.get('reset_at'))}: "
            f"{p['limit']} available again.\n\n{overview}"
        )
    elif notice.kind == NoticeKind.CREDITS_LOW:
        subject = f"Your credit balance is low ({p['balance']} credits)"
        body = f"Your balance fell below {p['threshold']} credits. Buy credits or turn on auto top-up: {credits}"
    else:
        subject = "You are out of credits"
        body = (
            f"Your credit balance is 0. Usage beyond your plan's allowance is refused until you buy credits: {credits}"
        )
    return subject, body


def _when(iso: str | None) -> str:
    return when(datetime.fromisoformat(iso)) if iso else ""


def windows_close_finished(*, now: datetime, limit: int = 5000) -> int:
    """Mark ended windows closed and tell owners that a used allowance has reset.

    Idempotent: a window is closed once (closed_at), and its notice is unique per window.
    """
    closed = 0
    while True:
        with transaction.atomic():
            windows = list(
                AllowanceWindow.objects.select_related("allowance__meter")
                .filter(closed_at__isnull=True, end__lte=now)
                .order_by("end", "id")[:limit]
            )
            if not windows:
                return closed
            notices = [
                Notice(
                    organization_id=w.organization_id,
                    kind=NoticeKind.ALLOWANCE_RESET,
                    dedupe_key=f"{w.allowance_id}:{w.start.isoformat()}",
                    payload={
                        "window": _stored_label(w.allowance),
                        "meter": w.allowance.meter.name,
                        "limit": format_decimal(w.limit),
                        "used": format_decimal(w.used),
                        "reset_at": w.end.isoformat(),
                    },
                    created_at=now,
                )
                for w in windows
                if w.used > 0
            ]
            Notice.objects.bulk_create(notices, ignore_conflicts=True)
            # Only `closed_at` is written: `used` belongs to the engine, which holds the account lock.
            AllowanceWindow.objects.filter(pk__in=[w.pk for w in windows], closed_at__isnull=True).update(closed_at=now)
            closed += len(windows)
        if len(windows) < limit:
            return closed


def _stored_label(allowance: PlanAllowance) -> str:
    with translation.override(settings.LANGUAGE_CODE):  # stored, so not in the caller's language
        return allowance.window_label


def notices_send_pending(*, now: datetime, limit: int = 500) -> int:
    """Email each unsent notice once, to the people of the organization who get its category
    (accounts.selectors.notification_recipients: owners and admins unless they opted out, members
    who opted in).

    The row is claimed (sent_at set) in the same transaction that reads it, with SKIP LOCKED, so
    two workers never send the same notice; a crash before commit leaves it unsent for the next run.
    """
    sent = 0
    with transaction.atomic():
        notices = list(
            Notice.objects.select_for_update(skip_locked=True)
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
                subject, body = notice_text(notice)
                send_mail(subject, body, None, to, fail_silently=False)
                sent += 1
            notice.sent_at = now
        Notice.objects.bulk_update(notices, ["sent_at"])
    return sent
