"""How money reads for people: one implementation (billing.pricing.money_display), which the
dashboard's `price` tag (usage.templatetags.dashboard.money) uses in the active language."""

from __future__ import annotations

import pytest
from django.utils import translation

from billing.pricing import money_display
from usage.templatetags.dashboard import money


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
