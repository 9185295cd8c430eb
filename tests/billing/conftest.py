"""Fixtures for the billing tests."""

from __future__ import annotations

import pytest

from accounts.models import Role
from accounts.services import membership_set
from billing.services.provision import user_signup
from core.clock import now
from plans.selectors import catalogue_clear
from tests.billing.view_support import PASSWORD
from usage.management.commands.seed_demo import seed_catalogue


@pytest.fixture
def world(db):
    """Olga owns an org (default plan), Mia is a member of it, Otto has his own org."""
    seed_catalogue()
    catalogue_clear()
    olga, org = user_signup(email="olga@example.com", password=PASSWORD, name="Olga", now=now())
    mia, _ = user_signup(email="mia@example.com", password=PASSWORD, name="Mia", now=now())
    membership_set(organization=org, user=mia, role=Role.MEMBER)
    otto, other = user_signup(email="otto@example.com", password=PASSWORD, name="Otto", now=now())
    yield {"olga": olga, "org": org, "mia": mia, "otto": otto, "other": other}
    catalogue_clear()
