"""Usage notices: created once per dedupe key (a unique constraint), emailed once to those who want them."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import dateformat, timezone, translation
from django.utils.translation import gettext as _

from accounts.notifications import category_for_kind, emails_by_reader, reading_as
from accounts.selectors import notification_recipients_with_language
from core.money import format_decimal
from core.templatetags.formatting import number
from plans.models import WindowKind, window_label
from plans.selectors import catalogue
from usage.models import AllowanceWindow, Notice, NoticeKind

logger = logging.getLogger(__name__)


def notice_text(notice: Notice) -> tuple[str, str]:
    """Subject and body of a notice's email in the active language, times in the active time zone (payload
    keys as stored by the engine and sweep). The sender renders it once per (language, time zone) among the
    recipients (translation.override, timezone.override). ValueError for a kind it has no message for."""
    p = notice.payload
    meter = p.get("meter")
    if meter is None and "meter_id" in p:
        info = catalogue().meters_by_id.get(int(p["meter_id"]))
        meter = info.name if info else ""
    overview = f"{settings.PUBLIC_BASE_URL}/orgs/{notice.organization_id}/"
    credits = f"{settings.PUBLIC_BASE_URL}/orgs/{notice.organization_id}/credits/"
    if notice.kind == NoticeKind.WINDOW_THRESHOLD:
        values = {
            "percent": p["percent"],
            "window": _window_name(p),
            "meter": meter,
            "limit": number(p["limit"]),
            "when": _when(p.get("resets_at")),
            "link": overview,
        }
        subject = _("You have used %(percent)s%% of your %(window)s allowance for %(meter)s") % values
        body = "\n\n".join(
            [
                _(
                    "Your organization has used %(percent)s%% of its %(window)s allowance for %(meter)s "
                    "(limit %(limit)s). It resets at %(when)s."
                )
                % values,
                _("Past the allowance, usage is paid with credits. See your usage: %(link)s") % values,
            ]
        )
    elif notice.kind == NoticeKind.ALLOWANCE_RESET:
        values = {
            "window": _window_name(p),
            "meter": meter,
            "limit": number(p["limit"]),
            "when": _when(p.get("reset_at")),
        }
        subject = _("Your %(window)s allowance for %(meter)s has reset") % values
        body = _("Your %(window)s allowance for %(meter)s reset at %(when)s: %(limit)s available again.") % values
        body += f"\n\n{overview}"
    elif notice.kind == NoticeKind.CREDITS_LOW:
        values = {"balance": number(p["balance"]), "threshold": number(p["threshold"]), "link": credits}
        subject = _("Your credit balance is low (%(balance)s credits)") % values
        body = _("Your balance fell below %(threshold)s credits. Buy credits or turn on auto top-up: %(link)s") % values
    elif notice.kind == NoticeKind.CREDITS_DEPLETED:
        subject = _("You are out of credits")
        body = _(
            "Your credit balance is 0. Usage beyond your plan's allowance is refused until you buy credits: %(link)s"
        ) % {"link": credits}
    else:
        raise ValueError(f"no message for notice kind {notice.kind!r}")
    return subject, body


def _when(iso: str | None) -> str:
    """A stored time in the active time zone (the reader's), followed by the zone's name, as the active
    language writes dates: "2026-02-15 21:00 Asia/Tokyo", "2026年2月15日 21:00 Asia/Tokyo"."""
    if not iso:
        return ""
    at = timezone.localtime(datetime.fromisoformat(iso))
    zone = timezone.get_current_timezone_name()
    if (translation.get_language() or "").startswith("ja"):
        return f"{dateformat.format(at, 'Y年n月j日 H:i')} {zone}"
    return f"{at:%Y-%m-%d %H:%M} {zone}"


_STORED_WINDOW = re.compile(r"(\d+) (minute|hour|day)s?")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def _window_name(payload: dict[str, Any]) -> str:
    """A window's name in the active language: from its kind and length (stored since 2026-11-28);
    older payloads hold only the English label, read back through the same msgids (a name it does
    not know is kept as stored)."""
    if "window_kind" in payload:
        return window_label(payload["window_kind"], payload.get("window_seconds"))
    stored = str(payload["window"])
    if stored == "billing period":
        return window_label(WindowKind.PERIOD, None)
    match = _STORED_WINDOW.fullmatch(stored)
    if match is None:
        return stored
    return window_label(WindowKind.ROLLING, int(match[1]) * _UNIT_SECONDS[match[2]])


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
                        **window_fields(w.allowance.window_kind, w.allowance.window_seconds),
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


def window_fields(kind: str, seconds: int | None) -> dict[str, Any]:
    """How a notice's payload names its window: kind and length (the email names it in each reader's
    language), and the name in the site's language for the admin, whatever the request's language."""
    with translation.override(settings.LANGUAGE_CODE):
        label = window_label(kind, seconds)
    return {"window": label, "window_kind": kind, "window_seconds": seconds}


def notices_send_pending(*, now: datetime, limit: int = 500) -> int:
    """Email each unsent notice once, to the people of the organization who get its category
    (accounts.selectors.notification_recipients_with_language: owners and admins unless they opted
    out, members who opted in), one email per (language, time zone) among them, each in its readers'
    language with times in their zone. Returns how many notices were emailed.

    The row is claimed (sent_at set) in the same transaction that reads it, with SKIP LOCKED, so
    two workers never send the same notice; a crash before commit leaves it unsent for the next run.
    A notice the sender cannot write (a kind without a category or a message, as a newer release may
    store, or a payload it cannot read) is logged with its id and kind and stamped too, unsent, so it
    neither stops the others nor comes back every run.
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
        recipients = notification_recipients_with_language(
            organization_ids={n.organization_id for n in notices},
            categories={c for n in notices if (c := category_for_kind(n.kind)) is not None},
        )
        for notice in notices:
            notice.sent_at = now
            category = category_for_kind(notice.kind)
            if category is None:
                logger.error("notice %s set aside unsent: kind %r has no category", notice.pk, notice.kind)
                continue
            people = recipients.get((notice.organization_id, category), [])
            try:  # every email is written before any is sent: a notice goes to all its readers or to none
                emails = [
                    (*_notice_text_for(notice, language, zone), to)
                    for (language, zone), to in emails_by_reader(people).items()
                ]
            except (LookupError, ValueError, TypeError, ArithmeticError):
                logger.exception("notice %s set aside unsent: kind %r could not be written", notice.pk, notice.kind)
                continue
            for subject, body, to in emails:
                send_mail(subject, body, None, to, fail_silently=False)
            if people:
                sent += 1
        Notice.objects.bulk_update(notices, ["sent_at"])
    return sent


def _notice_text_for(notice: Notice, language: str, zone: str) -> tuple[str, str]:
    with reading_as(language, zone):
        return notice_text(notice)
