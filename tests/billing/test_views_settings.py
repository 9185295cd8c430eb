"""The credits page's auto top-up settings and the payment methods page, against a real
localstripe: owners manage, members read (403 on POST), another organization's pages are absent.

Catalogue: the demo one (usd pack rate: credits-1000 = $40.00, i.e. $0.04 per credit).
"""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import translation

from billing.forms import AutoTopUpForm
from billing.models import CreditAccount, CreditPack, StripeCustomer
from tests.billing.stripe_fixtures import CARD_SUCCEEDS
from tests.billing.view_support import card_on_file, client_for

CARD_SECOND = "4000056655665556"  # localstripe names every test card "visa"


def text(response) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def account(org) -> CreditAccount:
    return CreditAccount.objects.get(organization=org)


def auto_state(org) -> tuple[bool, Decimal, Decimal, int | None]:
    a = account(org)
    return a.auto_topup_enabled, a.auto_topup_min_balance, a.auto_topup_target_balance, a.auto_topup_monthly_cap_amount


def save_auto(client: Client, org, **fields: str):
    return client.post(reverse("org_auto_topup", kwargs={"org_id": org.pk}), fields)


ON = {"enabled": "on", "min_balance": "100", "target_balance": "800", "monthly_cap": "100.00"}


# Auto top-up ----------------------------------------------------------------------------------


def test_the_credits_page_shows_auto_top_up_off_by_default_with_the_form_for_the_owner(world):
    # given Olga's new organization
    # when she opens the credits page
    response = client_for(world["olga"]).get(reverse("org_credits", kwargs={"org_id": world["org"].pk}))
    # then auto top-up is off, nothing is set, and she gets the form
    assert response.status_code == 200
    page = text(response)
    assert "Automatic top-up is off." in page
    assert "Set a minimum and a target balance to see what a top-up charges." in page
    assert f'action="/orgs/{world["org"].pk}/credits/auto-top-up/"' in page
    assert 'name="enabled"' in page and "checked" not in page.split('name="enabled"')[1].split(">")[0]
    assert auto_state(world["org"])[0] is False


def test_the_owner_turns_auto_top_up_on_and_the_page_says_what_one_top_up_charges(world, localstripe):
    # given a card on file
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    # when Olga turns auto top-up on: below 100, up to 800, at most $100.00 a month
    response = save_auto(client, world["org"], **ON)
    # then it is on with those settings (the cap in cents)
    assert response.status_code == 302
    assert response["Location"] == f"/orgs/{world['org'].pk}/credits/#auto-topup"
    assert auto_state(world["org"]) == (True, Decimal("100"), Decimal("800"), 10000)
    # and the page states the state, trigger, amount per charge, cap and how to turn it off
    page = text(client.get(response["Location"]))
    assert "Automatic top-up is on." in page
    assert "When your balance falls below 100 credits." in page
    assert "Minimum 700 credits will be purchased, equivalent to $28.00." in page
    assert "At most $100.00 per calendar month; no top-up is charged beyond it." in page
    assert "Charged to your Visa •••• 4242" in page
    assert "Untick “Turn on automatic top-up” below and save." in page
    # and what a top-up's credits are worth (dollars: before tax), their expiry, the refund terms on the page
    assert "<dd>Minimum 700 credits will be purchased, equivalent to $28.00.</dd>" in page
    assert "<dt>Expiry of credits</dt> <dd>The credits expire 365 days after the payment.</dd>" in page
    assert (
        '<dd>Top-ups follow the same <a href="#refund-policy">cancellation and refund terms</a> as credit packs.</dd>'
    ) in page
    policy = page[page.index('<section id="refund-policy"') :]
    assert '<h2 id="refund-policy-title" class="section-title">Cancellation and refunds</h2>' in policy
    assert (
        "Purchases cannot be cancelled once the credits are added. Unused credits that have not expired can be "
        "refunded on request: the unused part of the price, pro rata, goes back to the card that paid."
    ) in policy
    assert "Used or expired credits are not refunded." in policy
    assert "These terms apply to credit packs and to automatic top-ups." in policy


def test_a_top_up_in_yen_is_quoted_tax_included(world, localstripe):
    # given Olga's auto top-up priced in yen (credits-1000-jpy: ¥6 a credit), from 100 up to 800 credits
    CreditAccount.objects.filter(organization=world["org"]).update(
        auto_topup_currency="jpy", auto_topup_min_balance=Decimal(100), auto_topup_target_balance=Decimal(800)
    )
    client = client_for(world["olga"])
    # when she opens the credits page, in English and in Japanese
    page = text(client.get(reverse("org_credits", kwargs={"org_id": world["org"].pk})))
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})
    page_ja = text(client.get(reverse("org_credits", kwargs={"org_id": world["org"].pk})))
    # then yen prices are shown tax included
    assert "<dd>Minimum 700 credits will be purchased, equivalent to ¥4,200. (tax included)</dd>" in page
    assert "<dd>最低 700 クレジットを購入します（4,200円 相当）。 （税込）</dd>" in page_ja


@pytest.mark.parametrize("auto_topup", [True, False], ids=["auto top-up on", "auto top-up never set"])
def test_the_credits_page_runs_no_sql_statement_twice(world, localstripe, auto_topup):
    # given Olga's organization, with auto top-up on (its currency saved) or never set (the plan's currency)
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    if auto_topup:
        assert save_auto(client, world["org"], **ON).status_code == 302
    url = reverse("org_credits", kwargs={"org_id": world["org"].pk})
    client.get(url)  # the per-process caches (catalogue, session) are warm, as on any later visit
    # when she opens the credits page
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    # then it shows the auto top-up section, and no statement was sent twice
    assert response.status_code == 200
    quote = "Minimum 700 credits will be purchased, equivalent to $28.00."
    assert (quote in text(response)) is auto_topup
    statements = Counter(query["sql"] for query in queries.captured_queries)
    assert sum(1 for sql in statements if 'FROM "billing_creditaccount"' in sql) == 1
    assert {sql: n for sql, n in statements.items() if n > 1} == {}


def test_the_owner_turns_auto_top_up_off_and_the_settings_are_kept(world, localstripe):
    # given auto top-up on
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    assert save_auto(client, world["org"], **ON).status_code == 302
    # when Olga saves the form unticked
    response = save_auto(client, world["org"], min_balance="100", target_balance="800", monthly_cap="100.00")
    # then it is off; the settings stay for next time and the form shows them
    assert response.status_code == 302
    assert auto_state(world["org"]) == (False, Decimal("100"), Decimal("800"), 10000)
    page = text(client.get(reverse("org_credits", kwargs={"org_id": world["org"].pk})))
    assert "Automatic top-up is off." in page
    assert 'name="target_balance" value="800"' in page
    assert 'name="monthly_cap" value="100.00"' in page


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({**ON, "target_balance": "100"}, "The target balance must be more than the minimum balance."),
        ({**ON, "monthly_cap": "27.99"}, "The monthly limit must cover at least one top-up ($28.00)."),
        ({**ON, "min_balance": "", "target_balance": ""}, "This field is required."),
        ({**ON, "min_balance": "-5"}, "Ensure this value is greater than or equal to 0."),
        ({**ON, "monthly_cap": "lots"}, "Enter a number."),
        ({**ON, "monthly_cap": "100.005"}, "Ensure that there are no more than 2 decimal places."),
        ({**ON, "min_balance": "100", "target_balance": "101"}, "would charge less than our payment provider accepts"),
    ],
)
def test_invalid_settings_are_shown_on_the_form_and_change_nothing(world, localstripe, fields, message):
    # given a card on file and auto top-up off
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    # when Olga submits invalid settings
    response = save_auto(client_for(world["olga"]), world["org"], **fields)
    # then the form says why, next to the fields, and nothing changed
    assert response.status_code == 400
    page = text(response)
    assert message in page
    assert "Please correct the errors below." in page
    assert auto_state(world["org"]) == (False, Decimal("0"), Decimal("0"), None)


def test_auto_top_up_needs_a_card_on_file(world):
    # given no card on file
    # when Olga turns auto top-up on
    response = save_auto(client_for(world["olga"]), world["org"], **ON)
    # then the form says to add a card and it stays off
    assert response.status_code == 400
    assert "Add a card before turning on automatic top-up." in text(response)
    assert auto_state(world["org"])[0] is False


def test_a_member_reads_auto_top_up_and_cannot_change_it(world, localstripe):
    # given auto top-up on, set by Olga
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    assert save_auto(client_for(world["olga"]), world["org"], **ON).status_code == 302
    mia = client_for(world["mia"])
    # when Mia (a member) opens the credits page
    page = text(mia.get(reverse("org_credits", kwargs={"org_id": world["org"].pk})))
    # then she reads the settings without a form
    assert "Automatic top-up is on." in page
    assert "Minimum 700 credits will be purchased, equivalent to $28.00." in page
    assert "Only owners and admins can change automatic top-up." in page
    assert "auto-top-up/" not in page
    # and her POST is refused and changes nothing
    assert save_auto(mia, world["org"], min_balance="1", target_balance="900", monthly_cap="500").status_code == 403
    assert auto_state(world["org"]) == (True, Decimal("100"), Decimal("800"), 10000)


def test_another_organizations_auto_top_up_is_absent(world, localstripe):
    # given Otto, who is not in Olga's organization
    otto = client_for(world["otto"])
    # when he opens or posts to its credits page
    # then both are 404 and nothing changes
    assert otto.get(reverse("org_credits", kwargs={"org_id": world["org"].pk})).status_code == 404
    assert save_auto(otto, world["org"], **ON).status_code == 404
    assert auto_state(world["org"])[0] is False


# Payment methods ------------------------------------------------------------------------------


def cards_url(org) -> str:
    return reverse("org_cards", kwargs={"org_id": org.pk})


def test_the_payment_methods_page_lists_cards_with_the_default_first(world, localstripe):
    # given a Visa 4242 then a Visa 5556, the 5556 the default
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    card_on_file(localstripe, world["org"], CARD_SECOND)
    # when Olga opens payment methods
    response = client_for(world["olga"]).get(cards_url(world["org"]))
    # then both are listed with expiry, the default first with its badge, and the add-card dialog is there
    assert response.status_code == 200
    page = text(response)
    assert page.count("Visa •••• 5556") >= 1 and page.count("Visa •••• 4242") >= 1
    assert page.index("Visa •••• 5556") < page.index("Visa •••• 4242")
    assert page.count('<span class="badge">Default</span>') == 1
    assert "12/2034" in page
    assert 'aria-current="page">Payment methods</a>' in page
    assert 'id="buy-title">Add a card</h2>' in page
    assert "data-card-element" in page


def test_the_owner_makes_another_card_the_default(world, localstripe):
    # given a Visa 4242 then a Visa 5556 (the default)
    visa = card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    card_on_file(localstripe, world["org"], CARD_SECOND)
    client = client_for(world["olga"])
    # when Olga makes the 4242 the default
    response = client.post(
        reverse("org_card_make_default", kwargs={"org_id": world["org"].pk}), {"payment_method": visa}
    )
    # then purchases charge the 4242
    assert response.status_code == 302
    customer = StripeCustomer.objects.get(organization=world["org"])
    assert (customer.default_payment_method_id, customer.card_brand, customer.card_last4) == (visa, "visa", "4242")
    page = text(client.get(cards_url(world["org"])))
    assert "Purchases and automatic top-ups now charge this card." in page
    assert page.index("Visa •••• 4242") < page.index("Visa •••• 5556")


def test_the_owner_removes_the_default_card(world, localstripe):
    # given one card, the default
    visa = card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    # when Olga removes it (the form asks first)
    page = text(client.get(cards_url(world["org"])))
    assert 'data-confirm="Remove the Visa •••• 4242?"' in page
    response = client.post(reverse("org_card_remove", kwargs={"org_id": world["org"].pk}), {"payment_method": visa})
    # then no card is on file any more
    assert response.status_code == 302
    customer = StripeCustomer.objects.get(organization=world["org"])
    assert (customer.default_payment_method_id, customer.card_brand, customer.card_last4) == ("", "", "")
    page = text(client.get(cards_url(world["org"])))
    assert "The card is removed." in page
    assert "No card on file." in page
    assert "•••• 4242" not in page


def test_a_card_of_another_organization_cannot_be_removed(world, localstripe):
    # given Otto's card and Olga's
    ottos = card_on_file(localstripe, world["other"], CARD_SUCCEEDS)
    card_on_file(localstripe, world["org"], CARD_SECOND)
    client = client_for(world["olga"])
    # when Olga posts Otto's card id (or garbage) to her own organization
    for payment_method in (ottos, "not-a-card"):
        response = client.post(
            reverse("org_card_remove", kwargs={"org_id": world["org"].pk}), {"payment_method": payment_method}
        )
        # then she is told it is not on file, and Otto's card stays his default
        assert response.status_code == 302
        assert "This card is not on file." in text(client.get(cards_url(world["org"])))
    assert StripeCustomer.objects.get(organization=world["other"]).default_payment_method_id == ottos


def test_a_member_sees_cards_read_only_and_gets_403_on_changes(world, localstripe):
    # given Olga's card
    visa = card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    mia = client_for(world["mia"])
    # when Mia opens payment methods
    response = mia.get(cards_url(world["org"]))
    # then she sees the card but no actions and no dialog
    assert response.status_code == 200
    page = text(response)
    assert "Visa •••• 4242" in page
    assert "Only owners and admins can add or remove cards." in page
    assert "Make default" not in page and "cards/remove/" not in page and 'id="buy-dialog"' not in page
    # and her POSTs are refused and change nothing
    for name in ("org_card_make_default", "org_card_remove"):
        assert mia.post(reverse(name, kwargs={"org_id": world["org"].pk}), {"payment_method": visa}).status_code == 403
    assert StripeCustomer.objects.get(organization=world["org"]).default_payment_method_id == visa


def test_another_organizations_payment_methods_are_absent(world, localstripe):
    # given Olga's card
    visa = card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    otto = client_for(world["otto"])
    # when Otto opens or posts to her payment methods
    # then every answer is 404 and the card stays
    assert otto.get(cards_url(world["org"])).status_code == 404
    for name in ("org_card_make_default", "org_card_remove"):
        assert otto.post(reverse(name, kwargs={"org_id": world["org"].pk}), {"payment_method": visa}).status_code == 404
    assert StripeCustomer.objects.get(organization=world["org"]).default_payment_method_id == visa


def test_saving_a_card_from_the_dialog_tells_the_page_to_refresh_its_list(world, localstripe):
    # given a card element's new payment method
    pm = localstripe.payment_method_create(CARD_SECOND)
    # when the dialog posts it
    response = client_for(world["olga"]).post(
        reverse("org_card_default", kwargs={"org_id": world["org"].pk}), {"payment_method": pm}, HTTP_HX_REQUEST="true"
    )
    # then it is the default and the payment methods list is told to reload
    assert response.status_code == 200
    assert response["HX-Trigger"] == '{"cards:changed": true}'
    assert StripeCustomer.objects.get(organization=world["org"]).card_last4 == "5556"


def test_in_japanese_auto_top_up_states_the_charge_trigger_cap_and_how_to_turn_it_off(world, localstripe):
    # given auto top-up on, and Olga reading Japanese
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    assert save_auto(client, world["org"], **ON).status_code == 302
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})
    # when she opens the credits page and the payment methods page
    credits = text(client.get(reverse("org_credits", kwargs={"org_id": world["org"].pk})))
    cards = text(client.get(cards_url(world["org"])))
    # then the section is in Japanese
    assert "自動チャージは有効です。" in credits
    assert "残高が 100 クレジットを下回ったとき。" in credits
    assert "最低 700 クレジットを購入します（$28.00 相当）。" in credits
    assert "1か月あたり最大 $100.00。これを超える自動チャージは行いません。" in credits
    assert "下の「自動チャージを有効にする」のチェックを外して保存してください。" in credits
    assert "<h1>お支払い方法</h1>" in cards
    assert '<span class="badge">デフォルト</span>' in cards
    # and a rule's error is translated too
    bad = save_auto(client, world["org"], **{**ON, "target_balance": "50"})
    assert "目標残高は最低残高より大きくしてください。" in text(bad)


def test_in_japanese_the_rules_with_an_amount_or_a_currency_are_translated(world, localstripe):
    # given Olga reading Japanese, with a card on file
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})
    # when the monthly limit does not cover one top-up ($28.00)
    low = text(save_auto(client, world["org"], **{**ON, "monthly_cap": "27.99"}))
    # then the sentence is Japanese, with the amount written as the page writes money
    assert "月間上限は、自動チャージ1回分（$28.00）以上にしてください。" in low
    # and when no pack is on sale in the account's currency
    CreditPack.objects.update(is_active=False)
    unsold = text(save_auto(client, world["org"], **ON))
    assert "USD ではクレジットを販売していません。" in unsold
    assert auto_state(world["org"])[0] is False


def test_in_japanese_a_yen_amount_in_a_rule_is_written_in_yen(world, localstripe):
    # given Olga's account priced in yen (credits-1000-jpy: ¥6,000 for 1,000 credits, ¥6 a credit)
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    CreditAccount.objects.filter(organization=world["org"]).update(auto_topup_currency="jpy")
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})
    # when the limit covers less than one top-up from 100 to 800 credits (¥4,200)
    page = text(save_auto(client, world["org"], **{**ON, "monthly_cap": "4199"}))
    # then the amount is grouped and in 円
    assert "月間上限は、自動チャージ1回分（4,200円）以上にしてください。" in page


def test_the_monthly_limit_is_whole_yen_in_jpy_and_is_stored_in_minor_units():
    # given the form for a yen account
    # when the limit has a fraction of a yen, or is whole
    fraction = AutoTopUpForm(
        {"enabled": "on", "min_balance": "1", "target_balance": "2", "monthly_cap": "1000.5"}, currency="jpy"
    )
    whole = AutoTopUpForm(
        {"enabled": "on", "min_balance": "1", "target_balance": "2", "monthly_cap": "1000"}, currency="jpy"
    )
    cents = AutoTopUpForm(
        {"enabled": "on", "min_balance": "1", "target_balance": "2", "monthly_cap": "12.34"}, currency="usd"
    )
    # then the fraction is refused and the others are stored as minor units
    with translation.override("en"):
        assert fraction.errors == {"monthly_cap": ["Enter a whole amount of JPY."]}
    assert whole.is_valid() and whole.monthly_cap_minor() == 1000
    assert cents.is_valid() and cents.monthly_cap_minor() == 1234
