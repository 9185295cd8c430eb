"""How the billing pages word the catalogue and prices (`{% load billing_format %}`): an allowance's
window, a meter's unit, and a price as customers read it, tax included where its currency's
prices include tax. Generic numbers, money and dates are core's (`{% load formatting %}`).
"""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop, ngettext

from billing.pricing import tax_inclusive
from core.templatetags.formatting import money, to_decimal

register = template.Library()


def window_label(kind: str, seconds: int | None) -> str:
    """The window's name in the active language ("5 hours", "7 days", "Billing period")."""
    if kind == "period" or not seconds:
        return _("billing period")
    if seconds % 86400 == 0:
        n = seconds // 86400
        return ngettext("%(n)s day", "%(n)s days", n) % {"n": n}
    if seconds % 3600 == 0:
        n = seconds // 3600
        return ngettext("%(n)s hour", "%(n)s hours", n) % {"n": n}
    n = seconds // 60
    return ngettext("%(n)s minute", "%(n)s minutes", n) % {"n": n}


# Units come from the catalogue; these are the ones the dashboard knows how to translate.
UNIT_WORDS = [
    gettext_noop("task"),
    gettext_noop("tasks"),
    gettext_noop("second"),
    gettext_noop("seconds"),
    gettext_noop("minute"),
    gettext_noop("minutes"),
    gettext_noop("image"),
    gettext_noop("images"),
    gettext_noop("token"),
    gettext_noop("tokens"),
    gettext_noop("request"),
    gettext_noop("requests"),
]


def unit_word(singular: str, plural: str, amount: Decimal) -> str:
    word = singular if amount == 1 else (plural or singular)
    return _(word) if word in UNIT_WORDS else word


def customer_price(amount_minor: int, currency: str) -> str:
    """A price as customers read it: "$40.00"; in a tax-inclusive currency (billing.pricing.tax_inclusive)
    "¥6,000 (tax included)", Japanese "6,000円（税込）"."""
    amount = money(amount_minor, currency)
    if not tax_inclusive(currency):
        return amount
    return _("%(amount)s (tax included)") % {"amount": amount}


register.filter("tax_inclusive", tax_inclusive)
register.simple_tag(customer_price, name="customer_price")


@register.filter("window")
def window_of(allowance: object) -> str:
    """An allowance (plans.selectors.AllowanceInfo) -> its window's name."""
    return window_label(str(getattr(allowance, "window_kind", "")), getattr(allowance, "window_seconds", None))


@register.filter("units")
def units_of(meter: object, amount: object = 2) -> str:
    """A meter's unit for an amount (plural unless it is 1), translated when known."""
    d = to_decimal(amount)
    return unit_word(
        str(getattr(meter, "unit", "")), str(getattr(meter, "unit_plural", "")), d if d is not None else Decimal(2)
    )
