from __future__ import annotations

import os

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.authentication import clear_cache
from accounts.services import api_key_create, service_token_create
from plans.selectors import catalogue_clear


@pytest.fixture(autouse=True)
def _fresh_caches():
    """The catalogue and auth caches are per process; every test starts from the database."""
    catalogue_clear()
    clear_cache()
    yield
    catalogue_clear()
    clear_cache()


@pytest.fixture
def require_postgres():
    """For tests that need PostgreSQL: skip locally on SQLite, but fail in CI (CI=true)."""
    if connection.vendor != "postgresql":
        if os.environ.get("CI"):
            pytest.fail("This test needs PostgreSQL: set DATABASE_URL (CI must provide it).")
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")


@pytest.fixture
def service_client(db):
    _, secret = service_token_create(name="tests-usage", scope="usage")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def admin_client(db):
    _, secret = service_token_create(name="tests-admin", scope="admin")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def key_client_for():
    """A client authenticated with a customer API key of the given organization."""

    def build(organization):
        _, secret = api_key_create(organization=organization, name="test key")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return build


# localstripe (a real process per session) and dj-stripe's rows: see tests/billing/stripe_fixtures.py.
from tests.billing.stripe_fixtures import djstripe_endpoint, localstripe, localstripe_session  # noqa: E402, F401


@pytest.fixture(autouse=True)
def _plain_http(settings):
    """Tests speak plain HTTP to the test client and localstripe; production redirects to HTTPS."""
    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """PBKDF2 costs about a second per user on this machine class; tests do not need it."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
