from decimal import Decimal

import pytest
from django.utils import translation

from plans.models import WindowKind
from plans.selectors import catalogue, catalogue_clear
from tests.factories import AllowanceFactory


@pytest.mark.django_db
def test_window_labels_follow_the_language_of_each_use_not_of_the_cache_load():
    # Given a catalogue first loaded while a Japanese page was rendering
    allowance = AllowanceFactory(limit=Decimal("5"), window_kind=WindowKind.ROLLING, window_seconds=5 * 3600)
    catalogue_clear()
    with translation.override("ja"):
        japanese = catalogue().allowances_by_id[allowance.pk].label

    # When an English caller (the API) reads the cached catalogue
    with translation.override("en"):
        english = catalogue().allowances_by_id[allowance.pk].label

    # Then each sees its own language
    assert english == "5 hours"
    assert japanese != english
