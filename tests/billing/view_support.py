"""Helpers for the billing pages' view tests (buy dialog, plans, settings); their `world`
fixture is in tests/billing/conftest.py."""

from __future__ import annotations

from django.test import Client

from accounts.models import User
from billing.services.purchases import card_set_default
from core.clock import now

PASSWORD = "a-long-password-123"


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def card_on_file(localstripe, org, number: str) -> str:
    """A card attached to `org`'s customer and made the default; returns its payment method id."""
    pm = localstripe.payment_method_create(number)
    card_set_default(organization_id=org.pk, payment_method_id=pm, now=now())
    return pm
