"""Formatting for people: numbers, money, dates in the viewer's zone, durations.

Plain functions first (views, emails and CSV use them), registered as template filters below
(`{% load formatting %}`). Every function reads the active language and time zone, which the
dashboard's views activate per request.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from django import template
from django.utils import dateformat, timezone, translation
from django.utils.translation import gettext as _

from core.money import format_decimal, money_display

register = template.Library()


def _is_ja() -> bool:
    return (translation.get_language() or "").startswith("ja")


def to_decimal(value: object) -> Decimal | None:
    """A template value as a Decimal; None when it is empty or not a number."""
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def group(text: str) -> str:
    """Thousands grouping with "," (both English and Japanese use it): "1234567.5" -> "1,234,567.5"."""
    sign = ""
    if text.startswith("-"):
        sign, text = "-", text[1:]
    whole, _sep, frac = text.partition(".")
    parts: list[str] = []
    while len(whole) > 3:
        parts.insert(0, whole[-3:])
        whole = whole[:-3]
    parts.insert(0, whole)
    return sign + ",".join(parts) + ("." + frac if frac else "")


def number(value: object) -> str:
    """An exact decimal without trailing zeros, grouped: 1234.5000 -> "1,234.5"."""
    d = to_decimal(value)
    if d is None:
        return ""
    return group(format_decimal(d))


def signed_number(value: object) -> str:
    d = to_decimal(value)
    if d is None:
        return ""
    return ("+" if d > 0 else "") + number(d)


def money(amount_minor: int, currency: str) -> str:
    """Integer minor units + currency, for people, in the active language: $40.00, ¥6,000 (ja: 6,000円)."""
    return money_display(amount_minor, currency, language=translation.get_language())


def local(dt: datetime) -> datetime:
    return timezone.localtime(dt) if timezone.is_aware(dt) else dt


def when(dt: datetime | None, *, zone: bool = True) -> str:
    """ "Nov 28, 2026, 21:35 (Asia/Tokyo)"; Japanese: "2026年11月28日 21:35 (Asia/Tokyo)"."""
    if dt is None:
        return ""
    at = local(dt)
    text = dateformat.format(at, "Y年n月j日 H:i" if _is_ja() else "M j, Y, H:i")
    if zone:
        text += f" ({timezone.get_current_timezone_name()})"
    return text


def day(value: date) -> str:
    return dateformat.format(value, "Y年n月j日" if _is_ja() else "M j, Y")


def day_short(value: date) -> str:
    return dateformat.format(value, "n月j日" if _is_ja() else "M j")


def duration(delta: timedelta) -> str:
    """A countdown for people: "2 h 14 min", "3 d 4 h", "less than a minute"."""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return _("less than a minute")
    minutes = seconds // 60
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return _("%(d)s d %(h)s h") % {"d": days, "h": hours}
    if hours:
        return _("%(h)s h %(m)s min") % {"h": hours, "m": mins}
    return _("%(m)s min") % {"m": mins}


register.filter("num", number)
register.filter("signed_num", signed_number)
register.filter("when", when)
register.filter("day", day)
register.filter("day_short", day_short)
register.filter("duration", duration)


@register.filter("when_short")
def when_short(dt: datetime | None) -> str:
    return when(dt, zone=False)


@register.simple_tag
def price(amount_minor: int, currency: str) -> str:
    return money(amount_minor, currency)
