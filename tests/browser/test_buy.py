"""Buying credits from the dashboard's dialog in a real browser, against localstripe's fake
Stripe.js: add a card and buy with 4242 (the balance changes and the banner goes without a
reload), 0002 is declined, 3155 completes after "Complete authentication".

Owner on Plus with the 10 Codex cloud tasks of the week used: the limit-reached banner offers
"Buy credits" (credits-1000: 1,000 credits for $40.00).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from billing.models import CreditPurchase
from billing.selectors import credit_account
from billing.services.purchases import card_set_default
from core.clock import now
from plans.models import Plan, Subscription
from plans.selectors import catalogue_clear
from tests.billing.stripe_fixtures import CARD_DECLINED_ON_ATTACH, CARD_REQUIRES_ACTION, CARD_SUCCEEDS
from tests.browser.conftest import SCREENSHOT_DIR
from tests.browser.test_dashboard import log_in, owner_with_member, use
from usage.management.commands.seed_demo import seed_catalogue

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def catalogue():
    seed_catalogue()
    catalogue_clear()
    yield
    catalogue_clear()


@pytest.fixture
def stripe_js(page: Page, localstripe):
    """localstripe as the Stripe in use: the page loads its fake Stripe.js through our
    /stripe-js/local.js, which wraps it so that its global `class Element` does not shadow the
    DOM's (htmx's `instanceof Element` checks would fail). Real Stripe.js has no such class."""
    return localstripe


@pytest.fixture
def blocked_owner(catalogue, stripe_js):
    owner, _member, org_id = owner_with_member(plan="plus")
    for _ in range(10):
        use(org_id, "codex.cloud_task", "1", user=owner)
    return org_id


def open_dialog(page: Page, base: str, org_id: int):
    log_in(page, base, "owner@example.com")
    page.goto(f"{base}/orgs/{org_id}/")
    page.evaluate("() => { window.__notReloaded = true; }")
    banner = page.get_by_role("region", name="Usage limit reached")
    expect(banner).to_be_visible()
    banner.get_by_role("button", name="Buy credits").click()
    dialog = page.get_by_role("dialog", name="Buy credits")
    expect(dialog).to_be_visible()
    return dialog


def fill_card(dialog, number: str) -> None:
    dialog.get_by_label("number").fill(number)
    dialog.get_by_label("exp_month").fill("12")
    dialog.get_by_label("exp_year").fill("34")
    dialog.get_by_label("cvc").fill("123")
    dialog.get_by_label("postal_code").fill("10001")


def balance(org_id: int):
    account = credit_account(organization_id=org_id)
    assert account is not None
    return account.balance


def test_add_a_card_and_buy_with_4242_the_balance_changes_and_the_banner_goes(
    live_server, page, localstripe, blocked_owner, shoot, axe
):
    org_id = blocked_owner
    dialog = open_dialog(page, live_server.url, org_id)
    expect(page.locator("#balance")).to_contain_text("0 credits")

    # no card yet: the dialog offers to add one with Stripe.js's card element
    expect(dialog.get_by_role("heading", name="Add a card")).to_be_visible()
    fill_card(dialog, CARD_SUCCEEDS)
    shoot("10-buy-add-card")
    assert axe("#buy-dialog") == []
    dialog.get_by_role("button", name="Save card").click()
    expect(dialog).to_contain_text("Your card is saved. You can buy now.")
    expect(dialog).to_contain_text("Your Visa •••• 4242 (the card on file)")
    assert axe("#buy-dialog") == []
    shoot("11-buy-card-on-file")

    # when the owner pays for the first pack, with the amount on the button
    dialog.get_by_role("button", name="Pay $40.00").click()

    # then, without a reload, the dialog says so, the balance changes and the banner is gone
    expect(dialog).to_contain_text("1,000 credits added")
    expect(page.locator("#balance")).to_contain_text("1,000 credits")
    expect(page.get_by_role("region", name="Usage limit reached")).to_have_count(0)
    expect(page.locator("#live-status")).to_have_text("1,000 credits added")
    assert page.evaluate("() => window.__notReloaded") is True
    assert balance(org_id) == 1000
    assert CreditPurchase.objects.get(organization_id=org_id).status == "succeeded"
    shoot("12-buy-succeeded")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
    shoot("13-buy-overview-after")


def test_the_confirm_button_and_the_order_summary_follow_the_chosen_pack(
    live_server, page, localstripe, blocked_owner, shoot, axe
):
    pm = localstripe.payment_method_create(CARD_SUCCEEDS)
    card_set_default(organization_id=blocked_owner, payment_method_id=pm, now=now())
    dialog = open_dialog(page, live_server.url, blocked_owner)
    summary = dialog.locator("[data-buy-terms]")
    expect(summary.locator("dd:visible")).to_have_text(
        [
            "1,000 credits",
            "$40.00",  # dollar prices are shown before tax (settings.TAX_INCLUSIVE_CURRENCIES)
            "Your Visa •••• 4242 (the card on file)",
            "Charged at once when you press the Pay button below.",
            "The credits are added as soon as the payment succeeds.",
            "The credits expire 365 days after the payment.",
            re.compile(
                r"^\s*Purchases cannot be cancelled .* card that paid\.\s*Refund terms in full \(opens in a new tab\)$"
            ),
        ]
    )

    dialog.get_by_role("radio", name=re.compile("2,500 credits")).check()

    expect(dialog.get_by_role("button", name="Pay $100.00")).to_be_visible()
    expect(summary.locator("dd:visible").nth(0)).to_have_text("2,500 credits")
    expect(summary.locator("dd:visible").nth(1)).to_have_text("$100.00")
    expect(summary.locator("dd:visible")).to_have_count(7)
    assert axe("#buy-dialog") == []
    shoot("18-buy-order-summary")


def test_a_card_0002_is_declined_and_nothing_changes(live_server, page, localstripe, blocked_owner, shoot):
    org_id = blocked_owner
    dialog = open_dialog(page, live_server.url, org_id)

    fill_card(dialog, CARD_DECLINED_ON_ATTACH)
    dialog.get_by_role("button", name="Save card").click()

    expect(dialog.get_by_role("alert")).to_contain_text(re.compile("declined", re.IGNORECASE))
    expect(dialog.get_by_role("button", name=re.compile("^Pay"))).to_have_count(0)
    expect(page.get_by_role("region", name="Usage limit reached")).to_be_visible()
    assert balance(org_id) == 0
    assert CreditPurchase.objects.filter(organization_id=org_id).count() == 0
    shoot("14-buy-declined")


def test_3155_completes_after_authentication(live_server, page, localstripe, blocked_owner, shoot):
    org_id = blocked_owner
    pm = localstripe.payment_method_create(CARD_REQUIRES_ACTION)
    card_set_default(organization_id=org_id, payment_method_id=pm, now=now())
    dialog = open_dialog(page, live_server.url, org_id)

    dialog.get_by_role("button", name="Pay $40.00").click()

    # Stripe.js's 3-D Secure challenge
    complete = page.get_by_role("button", name="Complete authentication")
    expect(complete).to_be_visible()
    shoot("15-buy-3ds-challenge")
    complete.click()

    expect(dialog).to_contain_text("1,000 credits added")
    expect(page.locator("#balance")).to_contain_text("1,000 credits")
    expect(page.get_by_role("region", name="Usage limit reached")).to_have_count(0)
    assert balance(org_id) == 1000
    assert CreditPurchase.objects.get(organization_id=org_id).status == "succeeded"
    shoot("16-buy-3ds-succeeded")


def test_buying_from_the_credits_page_updates_its_balance(live_server, page, localstripe, blocked_owner, shoot):
    org_id = blocked_owner
    pm = localstripe.payment_method_create(CARD_SUCCEEDS)
    card_set_default(organization_id=org_id, payment_method_id=pm, now=now())
    log_in(page, live_server.url, "owner@example.com")
    page.goto(f"{live_server.url}/orgs/{org_id}/credits/")
    page.evaluate("() => { window.__notReloaded = true; }")
    expect(page.locator("#credits-balance")).to_contain_text("0 credits")

    page.get_by_role("button", name="Buy credits").click()
    dialog = page.get_by_role("dialog", name="Buy credits")
    dialog.get_by_role("button", name="Pay $40.00").click()

    expect(dialog).to_contain_text("1,000 credits added")
    expect(page.locator("#credits-balance")).to_contain_text("1,000 credits")
    expect(page.locator("#live-status")).to_have_text("1,000 credits added")
    assert page.evaluate("() => window.__notReloaded") is True
    shoot("17-buy-from-credits-page")


def test_a_double_click_on_pay_charges_once(live_server, page, localstripe, blocked_owner):
    org_id = blocked_owner
    pm = localstripe.payment_method_create(CARD_SUCCEEDS)
    card_set_default(organization_id=org_id, payment_method_id=pm, now=now())
    dialog = open_dialog(page, live_server.url, org_id)

    dialog.get_by_role("button", name="Pay $40.00").dblclick()

    expect(dialog).to_contain_text("1,000 credits added")
    expect(page.locator("#balance")).to_contain_text("1,000 credits")
    assert CreditPurchase.objects.filter(organization_id=org_id).count() == 1
    assert len(localstripe.charges()) == 1
    assert balance(org_id) == 1000


@pytest.mark.parametrize("language", ["en", "ja"])
def test_the_order_summary_reads_on_a_phone(live_server, page, localstripe, blocked_owner, shoot, axe, language):
    # given a phone-sized screen, and the owner reading English or Japanese
    page.set_viewport_size({"width": 375, "height": 740})
    pm = localstripe.payment_method_create(CARD_SUCCEEDS)
    card_set_default(organization_id=blocked_owner, payment_method_id=pm, now=now())
    log_in(page, live_server.url, "owner@example.com")
    if language == "ja":
        page.get_by_role("button", name="日本語").click()
        expect(page.locator("html")).to_have_attribute("lang", "ja")
    # when she opens the buy dialog from the credits page
    page.goto(f"{live_server.url}/orgs/{blocked_owner}/credits/")
    page.get_by_role("button", name="クレジットを購入" if language == "ja" else "Buy credits").click()
    dialog = page.get_by_role("dialog")
    terms = dialog.locator("[data-buy-terms]")
    # then the summary and the button fit the screen's width (no sideways scrolling)
    expect(terms).to_be_visible()
    pay = dialog.locator("[data-pay-button]")
    expect(pay).to_have_text("$40.00 を支払う" if language == "ja" else "Pay $40.00")
    for box in (dialog.bounding_box(), terms.bounding_box(), pay.bounding_box()):
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    if language == "ja":
        expect(terms).to_contain_text("お支払いボタンを押した時点で、直ちに請求されます。")
        expect(terms).to_contain_text("クレジットの追加後は、購入をキャンセルできません。")
    assert axe("#buy-dialog") == []
    shoot(f"19-buy-summary-phone-{language}")
    # the dialog as the phone shows it, scrolled to the summary (full-page shots do not scroll it)
    terms.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOT_DIR / f"19-buy-summary-phone-{language}-scrolled.png"))


def test_an_organization_billed_in_yen_buys_the_yen_pack_tax_included(live_server, page, localstripe, catalogue, shoot):
    # given the owner's organization on a plan in yen, a card on file, and the owner reading Japanese
    _owner, _member, org_id = owner_with_member()
    plan = Plan.objects.create(key="free-jpy", name="Free (JPY)", price_amount=0, currency="jpy")
    Subscription.objects.filter(organization_id=org_id).update(plan=plan)
    pm = localstripe.payment_method_create(CARD_SUCCEEDS)
    card_set_default(organization_id=org_id, payment_method_id=pm, now=now())
    log_in(page, live_server.url, "owner@example.com")
    page.get_by_role("button", name="日本語").click()
    expect(page.locator("html")).to_have_attribute("lang", "ja")
    # when she opens the buy dialog from the credits page
    page.goto(f"{live_server.url}/orgs/{org_id}/credits/")
    page.get_by_role("button", name="クレジットを購入").click()
    dialog = page.get_by_role("dialog")
    # then only the yen pack is offered, its price tax included, and she pays it
    expect(dialog.get_by_role("radio")).to_have_count(1)
    expect(dialog.locator(".pack-price")).to_have_text(["6,000円（税込）"])
    expect(dialog.locator("[data-buy-terms] dd:visible").nth(1)).to_have_text("6,000円（税込）")
    shoot("20-buy-yen-tax-included")
    dialog.get_by_role("button", name="6,000円 を支払う").click()
    expect(page.locator("#credits-balance")).to_contain_text("1,000")
    purchase = CreditPurchase.objects.get(organization_id=org_id)
    assert (purchase.status, purchase.amount, purchase.currency) == ("succeeded", 6000, "jpy")
    assert balance(org_id) == 1000
