"""What credits cost outside a pack, and how money reads.

Auto top-up buys an arbitrary number of credits "at the pack rate": the price per credit of the
cheapest active pack in the currency (`pack_rate_pack`), times the credits, rounded UP to a whole
minor unit (`price_at_pack_rate`, the one rounding of money in billing). Minor units are what Stripe
charges: cents for USD, whole yen for JPY (a zero-decimal currency), so rounding up to an integer
is right for both and never charges less than the pack rate.
"""

from __future__ import annotations

from decimal import Decimal

from billing.models import CreditPack
from core.money import CREDIT_PLACES, minor_units_per_major

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


CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}


def money_display(amount: int, currency: str, *, language: str | None) -> str:
    """Minor units for people, grouped, as the dashboard writes them: "$28.00", "¥6,000", and in
    Japanese "6,000円". The one implementation: usage/templatetags/dashboard.money (the `price` tag)
    calls it with the active language."""
    cur = (currency or "").lower()
    per_major = minor_units_per_major(cur)
    major = Decimal(int(amount)) / per_major
    digits = f"{major:,.0f}" if per_major == 1 else f"{major:,.2f}"
    if cur == "jpy" and (language or "").startswith("ja"):
        return f"{digits}円"
    symbol = CURRENCY_SYMBOLS.get(cur)
    return f"{symbol}{digits}" if symbol else f"{digits} {cur.upper()}"
