"""The dashboard in a real browser, walked as a person would.

Catalogue: the demo one. The Free plan allows 2 Codex cloud tasks per rolling 5 hours. Usage is
recorded through usage.services (as the API would) at the real current time, because the live
server reads the real clock. The browser runs in Asia/Tokyo with an English locale.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

import pytest
from playwright.sync_api import Page, expect

from accounts.models import Membership, Role, User
from accounts.services import membership_set
from billing.services import subscription_change
from billing.services.provision import user_signup
from core.clock import now
from plans.selectors import catalogue_clear
from usage.management.commands.seed_demo import seed_catalogue
from usage.services import UsageInput, usage_record

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "a-long-password-123"
TOKYO_TIME = re.compile(r"\d{4}, \d{2}:\d{2} \(Asia/Tokyo\)")


@pytest.fixture
def catalogue():
    seed_catalogue()
    catalogue_clear()
    yield
    catalogue_clear()


def use(org_id: int, meter: str, quantity: str, user: User | None = None):
    return usage_record(
        item=UsageInput(org_id, meter, Decimal(quantity), str(uuid.uuid4()), user_id=user.pk if user else None),
        now=now(),
    )


def log_in(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/orgs/\d+/$"))
    # the first page posts the browser's zone and reloads once; wait for that before going on
    expect(page.locator("footer")).to_contain_text("Times are shown in Asia/Tokyo.")


def owner_with_member(*, plan: str = "free") -> tuple[User, User, int]:
    owner, org = user_signup(email="owner@example.com", password=PASSWORD, name="Owner", now=now())
    member, _ = user_signup(email="member@example.com", password=PASSWORD, name="Member", now=now())
    membership_set(organization=org, user=member, role=Role.MEMBER)
    if plan != "free":
        subscription_change(organization_id=org.pk, plan_key=plan, now=now())
        catalogue_clear()
    return owner, member, org.pk


def test_sign_up_use_the_api_until_the_window_is_exhausted_and_see_the_banner(live_server, page, catalogue, shoot, axe):
    base = live_server.url
    # given a new visitor who signs up
    page.goto(f"{base}/signup/")
    page.get_by_label("Your name").fill("Sam")
    page.get_by_label("Email address").fill("sam@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(r"/orgs/\d+/$"))
    # the browser's zone is posted once and the page reloads in Tokyo time
    expect(page.locator("footer")).to_contain_text("Times are shown in Asia/Tokyo.")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    org_id = Membership.objects.get(user__email="sam@example.com").organization_id
    shoot("01-signed-up-overview")

    # when the API records usage until the 5-hour window of cloud tasks is used up, and one more is denied
    first = use(org_id, "codex.cloud_task", "2")
    denied = use(org_id, "codex.cloud_task", "1")
    assert (first.status, denied.status) == (201, 402)

    # then, without a reload, the overview shows the limit-reached banner with the reset time
    page.evaluate("() => { window.__notReloaded = true; }")
    page.evaluate("() => document.body.dispatchEvent(new Event('dashboard:refresh'))")
    banner = page.get_by_role("region", name="Usage limit reached")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("You've reached your Free plan's usage limit for Codex cloud tasks.")
    expect(banner).to_contain_text(re.compile(r"Resets in 4 h 59 min|Resets in 5 h 0 min"))
    expect(banner).to_contain_text(TOKYO_TIME)
    expect(banner.get_by_role("link", name="Upgrade")).to_be_visible()
    expect(page.locator("#live-status")).to_have_text("Usage limit reached")
    assert page.evaluate("() => window.__notReloaded") is True
    meter = page.get_by_label("5 hours window").nth(1)
    expect(meter).to_have_attribute("value", "2")
    expect(meter).to_have_attribute("max", "2")
    shoot("02-limit-reached-banner")
    assert axe() == []


def test_a_member_sees_ask_an_owner_and_no_buy_button(live_server, page, catalogue, shoot, axe):
    owner, member, org_id = owner_with_member(plan="plus")
    for _ in range(10):
        use(org_id, "codex.cloud_task", "1", user=owner)

    log_in(page, live_server.url, "member@example.com")
    page.goto(f"{live_server.url}/orgs/{org_id}/")

    banner = page.get_by_role("region", name="Usage limit reached")
    expect(banner).to_contain_text("Ask an owner of your organization to buy credits.")
    expect(banner).to_contain_text("Ask an owner — Owners: owner@example.com")
    expect(page.get_by_role("button", name="Buy credits")).to_have_count(0)
    expect(page.get_by_text("Owners and admins can buy credits.")).to_be_visible()
    shoot("03-member-ask-an-owner")
    assert axe() == []


def test_an_owner_opens_the_buy_dialog_without_a_card(live_server, page, catalogue, shoot, axe):
    # (buying: tests/browser/test_buy.py, with localstripe's Stripe.js)
    owner, _member, org_id = owner_with_member(plan="plus")
    for _ in range(10):
        use(org_id, "codex.cloud_task", "1", user=owner)

    log_in(page, live_server.url, "owner@example.com")
    page.goto(f"{live_server.url}/orgs/{org_id}/")
    banner = page.get_by_role("region", name="Usage limit reached")
    expect(banner).to_contain_text("Buy credits to keep working now.")
    banner.get_by_role("button", name="Buy credits").click()

    dialog = page.get_by_role("dialog", name="Buy credits")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading", name="Add a card")).to_be_visible()
    expect(dialog.get_by_role("button", name="Save card")).to_be_visible()
    shoot("04-buy-dialog")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()


def test_switching_to_japanese_translates_the_page(live_server, page, catalogue, shoot, axe):
    owner, _member, org_id = owner_with_member()
    use(org_id, "codex.cloud_task", "2", user=owner)

    log_in(page, live_server.url, "owner@example.com")
    page.get_by_role("button", name="日本語").click()

    expect(page.locator("html")).to_have_attribute("lang", "ja")
    expect(page.get_by_role("heading", name="概要")).to_be_visible()
    expect(page.get_by_role("region", name="利用上限に達しました")).to_contain_text(
        "Free プランの Codex cloud tasks の利用上限に達しました。"
    )
    expect(page.get_by_role("region", name="利用上限に達しました")).to_contain_text(
        re.compile(r"\d{4}年\d{1,2}月\d{1,2}日 \d{2}:\d{2} \(Asia/Tokyo\)")
    )
    expect(page.get_by_text("クレジット残高")).to_be_visible()
    expect(page.get_by_role("link", name="利用状況")).to_be_visible()
    shoot("05-japanese-overview")
    assert axe() == []
    assert User.objects.get(email="owner@example.com").language == "ja"


@pytest.mark.parametrize("path", ["usage/", "credits/", "plans/", "keys/", "team/", "notifications/"])
def test_main_pages_have_no_serious_accessibility_findings(live_server, page, catalogue, shoot, axe, path):
    owner, _member, org_id = owner_with_member(plan="plus")
    use(org_id, "codex.local_task", "3", user=owner)

    log_in(page, live_server.url, "owner@example.com")
    page.goto(f"{live_server.url}/orgs/{org_id}/{path}")

    expect(page.get_by_role("main")).to_be_visible()
    expect(
        page.get_by_role("navigation", name="Organization").get_by_role("link", name=re.compile(".+")).first
    ).to_be_visible()
    shoot(f"06-page-{path.strip('/')}")
    assert axe() == []


def test_an_owner_turns_off_usage_alerts_and_hears_it_is_saved(live_server, page, catalogue, shoot, axe):
    owner_with_member()
    log_in(page, live_server.url, "owner@example.com")
    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Notifications").click()

    # payment emails are ticked and cannot be changed by an owner
    expect(page.get_by_role("checkbox", name="Payment problems")).to_be_checked()
    expect(page.get_by_role("checkbox", name="Payment problems")).to_be_disabled()
    page.get_by_role("checkbox", name="Usage alerts").uncheck()
    page.get_by_role("button", name="Save").click()

    expect(page.get_by_role("status")).to_have_text("Your notification settings are saved.")
    expect(page.get_by_role("checkbox", name="Usage alerts")).not_to_be_checked()
    shoot("07-notifications-saved")
    assert axe() == []
    page.reload()
    expect(page.get_by_role("checkbox", name="Usage alerts")).not_to_be_checked()
    expect(page.get_by_role("checkbox", name="Allowance resets")).to_be_checked()


@pytest.mark.parametrize("path", ["/login/", "/signup/", "/password-reset/"])
def test_public_pages_have_no_serious_accessibility_findings(live_server, page, catalogue, axe, path):
    page.goto(f"{live_server.url}{path}")

    expect(page.get_by_role("main")).to_be_visible()
    assert axe() == []


def test_an_api_key_is_shown_once_with_a_copy_button(live_server, page, catalogue, shoot):
    owner_with_member()
    log_in(page, live_server.url, "owner@example.com")
    page.get_by_role("link", name="API keys").click()

    page.get_by_label("Key name").fill("CI runner")
    page.get_by_role("button", name="Create key").click()

    secret = page.get_by_label("API key")
    expect(secret).to_have_value(re.compile(r"^fck_"))
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    shoot("07-api-key-created")
    page.goto(page.url)
    expect(page.get_by_label("API key")).to_have_count(0)
