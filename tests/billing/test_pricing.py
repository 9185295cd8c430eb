"""How money reads for people: one implementation (core.money.money_display, which billing.pricing
re-exports), which the dashboard's `price` tag (core.templatetags.formatting.money) uses in the
active language; and which currencies' prices read "(tax included)" (settings.TAX_INCLUSIVE_CURRENCIES)."""

from __future__ import annotations

import pytest
from django.test import override_settings
from django.utils import translation

from billing.pricing import money_display, tax_inclusive
from billing.templatetags.billing_format import customer_price
from core.templatetags.formatting import money


@pytest.mark.parametrize(
    ("amount", "currency", "language", "expected"),
    [
        (4000, "usd", "en", "$40.00"),
        (123456789, "USD", "en", "$1,234,567.89"),
        (6000, "jpy", "en", "¥6,000"),
        (6000, "jpy", "ja", "6,000円"),
        (2800, "usd", "ja", "$28.00"),
        (123456, "chf", "en", "1,234.56 CHF"),
        (50, "eur", None, "€0.50"),
    ],
)
def test_money_display(amount, currency, language, expected):
    assert money_display(amount, currency, language=language) == expected


@pytest.mark.parametrize(("language", "expected"), [("en", "¥1,000,000"), ("ja", "1,000,000円")])
def test_the_template_filter_is_money_display_in_the_active_language(language, expected):
    with translation.override(language):
        assert money(1000000, "jpy") == expected


@pytest.mark.parametrize(
    ("currency", "expected"), [("jpy", True), ("JPY", True), ("usd", False), ("eur", False), ("", False)]
)
def test_by_default_only_yen_prices_include_tax(currency, expected):
    assert tax_inclusive(currency) is expected


@override_settings(TAX_INCLUSIVE_CURRENCIES=frozenset({"EUR", "JPY"}))
def test_the_tax_inclusive_currencies_are_a_setting():
    assert [tax_inclusive(c) for c in ("eur", "jpy", "usd")] == [True, True, False]


@pytest.mark.parametrize(
    ("amount", "currency", "language", "expected"),
    [
        (4000, "usd", "en", "$40.00"),
        (4000, "usd", "ja", "$40.00"),
        (6000, "jpy", "en", "¥6,000 (tax included)"),
        (6000, "jpy", "ja", "6,000円（税込）"),
    ],
)
def test_a_customer_price_says_tax_included_only_where_prices_include_tax(amount, currency, language, expected):
    with translation.override(language):
        assert customer_price(amount, currency) == expected
