"""manage.py seed_demo: idempotent, and the demo service token it saves opens this database."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from accounts.models import ServiceToken
from accounts.selectors import service_token_by_hash
from accounts.services import secret_hash

pytestmark = pytest.mark.django_db


def test_the_saved_demo_token_is_kept_while_it_works_and_replaced_when_it_does_not(settings, tmp_path):
    # Given a fresh database and nowhere a token was saved
    settings.VAR_DIR = tmp_path
    saved = tmp_path / "demo-service-token.txt"
    call_command("seed_demo", stdout=io.StringIO())
    first = saved.read_text().strip()
    assert service_token_by_hash(secret_hash(first)) is not None
    # When it runs again, the saved token still opens this database: it is kept
    call_command("seed_demo", stdout=io.StringIO())
    assert saved.read_text().strip() == first
    # When the file holds a token of another database (a seed elsewhere wrote it)
    saved.write_text("fcs_not-a-token-of-this-database\n")
    call_command("seed_demo", stdout=io.StringIO())
    # Then a new demo token replaces the old one, and the file opens this database again
    replaced = saved.read_text().strip()
    assert replaced != first
    assert service_token_by_hash(secret_hash(replaced)) is not None
    assert service_token_by_hash(secret_hash(first)) is None
    assert ServiceToken.objects.filter(name="demo").count() == 1
