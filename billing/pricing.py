"""What credits cost outside a pack, and how money reads.

Auto top-up buys an arbitrary number of credits "at the pack rate": the price per credit of the
cheapest active pack in the currency (`pack_rate_pack`), times the credits, rounded UP to a whole
minor unit (`price_at_pack_rate`, the one rounding of money in billing). Minor units are what Stripe
charges: cents for USD, whole yen for JPY (a zero-decimal currency), so rounding up to an integer
is right for both and never charges less than the pack rate.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings

from billing.models import CreditPack
from core.money import CREDIT_PLACES, minor_units_per_major
from core.money import money_display as money_display  # re-exported: billing's callers format money from here

# Stripe refuses charges below these amounts (minor units); unknown currencies use the default.
MINIMUM_CHARGE = {"usd": 50, "eur": 50, "gbp": 30, "jpy": 50, "cad": 50, "aud": 50, "chf": 50}
MINIMUM_CHARGE_DEFAULT = 50

_SCALE = 10**CREDIT_PLACES


def pack_rate_pack(currency: str) -> CreditPack | None:
    """The active pack with the lowest price per credit in `currency` (ties: fewest credits, then id)."""
    packs = list(CreditPack.objects.filter(is_active=True, currency=currency.lower()))
    if not packs:
        return None
    # price / credits compared without division: a/b < c/d  <=>  a*d < c*b (credits are positive).
    best = packs[0]
    for pack in packs[1:]:
        left, right = pack.price_amount * best.credits, best.price_amount * pack.credits
        if left < right or (left == right and (pack.credits, pack.pk) < (best.credits, best.pk)):
            best = pack
    return best


def price_at_pack_rate(credits: Decimal, pack: CreditPack) -> int:
    """Minor units for `credits` at `pack`'s price per credit, rounded up to a whole minor unit.

    Exact integer arithmetic on the stored scale (no Decimal division, no float).
    """
    if credits <= 0:
        return 0
    numerator = int(credits * _SCALE) * pack.price_amount
    denominator = int(pack.credits * _SCALE)
    return -(-numerator // denominator)


def minimum_charge(currency: str) -> int:
    return MINIMUM_CHARGE.get(currency.lower(), MINIMUM_CHARGE_DEFAULT)


def format_money(amount: int, currency: str) -> str:
    """Minor units as a plain decimal string in major units: 1050 usd -> "10.50", 1000 jpy -> "1000"."""
    per_major = minor_units_per_major(currency)
    if per_major == 1:
        return str(amount)
    places = len(str(per_major)) - 1
    return f"{Decimal(amount).scaleb(-places):.{places}f}"


def tax_inclusive(currency: str) -> bool:
    """Whether prices in `currency` are shown tax-included ("(tax included)", Japanese "（税込）").

    settings.TAX_INCLUSIVE_CURRENCIES decides (default JPY: Japan's consumer prices include tax by law;
    US prices are shown before tax)."""
    return (currency or "").upper() in settings.TAX_INCLUSIVE_CURRENCIES
