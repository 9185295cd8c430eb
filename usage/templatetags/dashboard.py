"""The tags usage's templates load (`{% load dashboard %}`): core's formatting (numbers, money, dates,
durations) and billing's catalogue words (windows, units), registered under the names the templates
use, and what only usage needs (`percent`).

The implementations live below usage (core.templatetags.formatting, billing.templatetags.billing_format),
so billing's templates never load this library; the names stay importable from here for usage's code.
"""

from __future__ import annotations

from decimal import Decimal

from django import template

from billing.templatetags.billing_format import UNIT_WORDS, unit_word, units_of, window_label, window_of
from core.templatetags.formatting import (
    day,
    day_short,
    duration,
    group,
    local,
    money,
    number,
    price,
    signed_number,
    when,
    when_short,
)

__all__ = [
    "UNIT_WORDS",
    "day",
    "day_short",
    "duration",
    "group",
    "local",
    "money",
    "number",
    "percent",
    "signed_number",
    "unit_word",
    "when",
    "window_label",
]

register = template.Library()


def percent(used: Decimal, limit: Decimal) -> int:
    """Whole percent used, rounded down so that 99.6 % never reads as full; 100 only when full."""
    if limit <= 0:
        return 100 if used > 0 else 0
    if used >= limit:
        return 100
    return int(used * 100 / limit)


register.filter("num", number)
register.filter("signed_num", signed_number)
register.filter("when", when)
register.filter("when_short", when_short)
register.filter("day", day)
register.filter("day_short", day_short)
register.filter("duration", duration)
register.filter("window", window_of)
register.filter("units", units_of)
register.simple_tag(price, name="price")
