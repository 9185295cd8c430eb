"""Credits, quantities and money.

Credits and meter quantities are exact Decimals with CREDIT_PLACES places, in the database and in
Python. `round_credits` is the one rounding function: it rounds half up to CREDIT_PLACES and is
applied to every computed amount (quantity x credits per unit, pro-rata shares) before it is
stored or compared. Money is integer minor units plus an ISO currency, as Stripe does.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

CREDIT_PLACES = 4
CREDIT_DIGITS = 20
_QUANTUM = Decimal(1).scaleb(-CREDIT_PLACES)
ZERO = Decimal("0").quantize(_QUANTUM)
# Exclusive bound of any stored amount (the columns hold CREDIT_DIGITS digits, CREDIT_PLACES after the point).
MAX_CREDITS = Decimal(10) ** (CREDIT_DIGITS - CREDIT_PLACES)

# ISO 4217 currencies without a minor unit (Stripe's list of zero-decimal currencies).
ZERO_DECIMAL_CURRENCIES = frozenset(
    ["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"]
)


def round_credits(value: Decimal | int | str) -> Decimal:
    """Round to the stored scale, half up. The only place credits or quantities are rounded."""
    return Decimal(value).quantize(_QUANTUM, rounding=ROUND_HALF_UP)


def parse_decimal(value: object) -> Decimal:
    """Parse a client-supplied decimal exactly; raise ValueError on anything else (floats included)."""
    if isinstance(value, bool | float):
        raise ValueError("must be a decimal string or an integer")
    text = str(value).strip()
    if not text.isascii() or "_" in text:  # Decimal() would take "1_000" and non-ASCII digits
        raise ValueError("must be a decimal number")
    try:
        result = Decimal(text)
    except (InvalidOperation, ValueError) as exc:
        raise ValueError("must be a decimal number") from exc
    if not result.is_finite():
        raise ValueError("must be a finite number")
    if abs(result) >= MAX_CREDITS:
        raise ValueError("is too large")
    if result != result.quantize(_QUANTUM, rounding=ROUND_HALF_UP):
        raise ValueError(f"must have at most {CREDIT_PLACES} decimal places")
    return round_credits(result)


def format_decimal(value: Decimal) -> str:
    """The API's decimal string: exact, without trailing zeros or exponent ("12.5", "100")."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def minor_units_per_major(currency: str) -> int:
    return 1 if currency.lower() in ZERO_DECIMAL_CURRENCIES else 100


CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}


def money_display(amount: int, currency: str, *, language: str | None) -> str:
    """Minor units for people, grouped, as the dashboard writes them: "$28.00", "¥6,000", and in
    Japanese "6,000円". The one implementation: the `price` template tag (core.templatetags.formatting)
    and billing's emails call it with the active language."""
    cur = (currency or "").lower()
    per_major = minor_units_per_major(cur)
    major = Decimal(int(amount)) / per_major
    digits = f"{major:,.0f}" if per_major == 1 else f"{major:,.2f}"
    if cur == "jpy" and (language or "").startswith("ja"):
        return f"{digits}円"
    symbol = CURRENCY_SYMBOLS.get(cur)
    return f"{symbol}{digits}" if symbol else f"{digits} {cur.upper()}"
