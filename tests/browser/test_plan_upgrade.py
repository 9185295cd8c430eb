"""Upgrading the plan in a real browser when the bank asks for 3-D Secure (localstripe's card
4000 0025 0000 3155 and its fake Stripe.js): the plans page opens the bank's challenge at once, and
after "Complete authentication" the plan has changed; after "Fail authentication" it has not.

Owner on the free plan; Plus costs $20.00 a month.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from billing.models import CreditPurchase, PurchaseKind, PurchaseStatus
from billing.services.purchases import card_set_default
from core.clock import now
from plans.models import Subscription
from plans.selectors import catalogue_clear
from tests.billing.stripe_fixtures import CARD_REQUIRES_ACTION
from tests.browser.test_dashboard import log_in, owner_with_member
from usage.management.commands.seed_demo import seed_catalogue

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def catalogue():
    seed_catalogue()
    catalogue_clear()
    yield
    catalogue_clear()


@pytest.fixture
def owner_with_3155(catalogue, localstripe):
    """The owner's organization on the free plan, with a card whose bank asks for 3-D Secure."""
    _owner, _member, org_id = owner_with_member()
    pm = localstripe.payment_method_create(CARD_REQUIRES_ACTION)
    card_set_default(organization_id=org_id, payment_method_id=pm, now=now())
    return org_id


def plan_key(org_id: int) -> str:
    return Subscription.objects.select_related("plan").get(organization_id=org_id).plan.key


def choose_plus(page: Page, base: str, org_id: int) -> None:
    log_in(page, base, "owner@example.com")
    page.goto(f"{base}/orgs/{org_id}/plans/")
    page.get_by_text("Change to Plus").click()
    page.get_by_role("button", name="Pay $20.00 and change plan").click()


def test_3155_upgrades_after_the_bank_confirms(live_server, page, owner_with_3155, shoot, axe):
    org_id = owner_with_3155
    # when the owner pays for Plus with a card that needs 3-D Secure
    choose_plus(page, live_server.url, org_id)

    # then the plans page says the bank must confirm and Stripe.js's challenge opens by itself
    expect(page.get_by_role("region", name="Your bank asks you to confirm this payment (3-D Secure).")).to_contain_text(
        "The payment of $20.00 for the Plus plan waits for your bank's confirmation"
    )
    complete = page.get_by_role("button", name="Complete authentication")
    expect(complete).to_be_visible()
    assert plan_key(org_id) == "free"
    shoot("30-plan-upgrade-3ds-challenge")
    assert axe("main") == []
    complete.click()

    # then the page finishes: the plan is Plus, paid, and the notice is gone
    expect(page.get_by_role("status")).to_contain_text("You are now on the Plus plan.")
    expect(page).to_have_url(re.compile(rf"/orgs/{org_id}/plans/$"))
    expect(page.get_by_role("region", name=re.compile("Your bank asks"))).to_have_count(0)
    expect(page.get_by_role("region", name="Plus")).to_contain_text("Current plan")
    assert plan_key(org_id) == "plus"
    purchase = CreditPurchase.objects.get(organization_id=org_id)
    assert (purchase.kind, purchase.status, purchase.amount) == (
        PurchaseKind.PLAN_UPGRADE,
        PurchaseStatus.SUCCEEDED,
        2000,
    )
    shoot("31-plan-upgrade-3ds-succeeded")


def test_3155_failed_authentication_keeps_the_plan(live_server, page, owner_with_3155, shoot):
    org_id = owner_with_3155
    choose_plus(page, live_server.url, org_id)

    page.get_by_role("button", name="Fail authentication").click()

    expect(page.get_by_role("status")).to_contain_text("Your bank did not confirm this payment.")
    expect(page.get_by_role("button", name="Confirm with your bank")).to_have_count(0)
    assert plan_key(org_id) == "free"
    assert CreditPurchase.objects.get(organization_id=org_id).status == PurchaseStatus.FAILED
    shoot("32-plan-upgrade-3ds-failed")
