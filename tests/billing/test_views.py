"""The buy dialog's actions on the dashboard, against a real localstripe: buy with the card on
file (htmx), decline, 3-D Secure settled on return, adding a card, permissions by role and org.

Catalogue: the demo one (packs credits-1000 = $40.00, credits-2500 = $100.00, credits-1000-jpy = ¥6,000).
The dialog offers only the packs in the organization's billing currency (its plan's): the demo plans
are in dollars, and `on_a_yen_plan` moves an organization to a plan in yen. Prices read "(tax
included)" only in a tax-inclusive currency (settings.TAX_INCLUSIVE_CURRENCIES, JPY by default).
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal

from django.test import Client, override_settings
from django.urls import reverse

from billing.models import CreditPack, CreditPurchase, StripeCustomer
from plans.models import Plan, Subscription
from tests.billing.payment_support import assert_nothing_granted, balance, ledger
from tests.billing.stripe_fixtures import (
    CARD_DECLINED_ON_ATTACH,
    CARD_DECLINED_ON_CHARGE,
    CARD_REQUIRES_ACTION,
    CARD_SUCCEEDS,
)
from tests.billing.view_support import card_on_file, client_for


def buy(client: Client, org, *, pack: str = "credits-1000", token: str | None = None):
    return client.post(
        reverse("org_buy", kwargs={"org_id": org.pk}),
        {"pack": pack, "token": token or uuid.uuid4().hex},
        HTTP_HX_REQUEST="true",
    )


def text(response) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def on_a_yen_plan(org) -> None:
    """Move `org` to a free plan priced in yen: its billing currency becomes JPY."""
    plan = Plan.objects.create(key="free-jpy", name="Free (JPY)", price_amount=0, currency="jpy")
    Subscription.objects.filter(organization=org).update(plan=plan)


def test_the_owner_sees_packs_the_card_on_file_and_a_button_with_the_amount(world, localstripe):
    # given Olga's Visa ending 4242 on file, on a plan in dollars
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    # when she opens the overview
    page = text(client_for(world["olga"]).get(f"/orgs/{world['org'].pk}/"))
    # then the dialog lists the two dollar packs (not the yen one), names the card and states the
    # amount on the button; dollar prices are before tax, so no "(tax included)"
    assert re.findall(r'name="pack" value="([^"]+)"', page) == ["credits-1000", "credits-2500"]
    assert "<dt>Payment method</dt> <dd>Your Visa •••• 4242 (the card on file)</dd>" in page
    assert "data-pay-button>Pay $40.00</button>" in page
    assert 'data-pay-label="Pay $100.00"' in page
    assert '<span class="pack-price">$40.00</span>' in page
    assert '<span class="pack-price">$100.00</span>' in page
    assert "¥" not in page
    assert "credits-1000-jpy" not in page
    assert "tax included" not in page
    assert "Payments arrive in the next release" not in page


def test_an_organization_billed_in_yen_sees_only_yen_packs_with_tax_included(world, localstripe):
    # given Olga's organization on a plan in yen, with a card on file
    on_a_yen_plan(world["org"])
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    # when she opens the credits page
    page = text(client_for(world["olga"]).get(f"/orgs/{world['org'].pk}/credits/"))
    # then only the yen pack is offered, its price tax included, and the button states it
    assert re.findall(r'name="pack" value="([^"]+)"', page) == ["credits-1000-jpy"]
    assert '<span class="pack-price">¥6,000 (tax included)</span>' in page
    assert "<dt>Price</dt> <dd>¥6,000 (tax included)</dd>" in terms(page)
    assert "data-pay-button>Pay ¥6,000</button>" in page
    assert "$" not in terms(page)


def test_without_a_card_the_list_of_packs_is_in_the_billing_currency_too(world, localstripe):
    page = text(client_for(world["olga"]).get(f"/orgs/{world['org'].pk}/"))
    packs = page[page.index('<ul class="pack-list"') : page.index("</ul>", page.index('<ul class="pack-list"'))]
    assert re.findall(r"<li>(.*?)</li>", packs) == [
        "<strong>1,000 credits</strong> · $40.00",
        "<strong>2,500 credits</strong> · $100.00",
    ]


@override_settings(TAX_INCLUSIVE_CURRENCIES=frozenset({"USD"}))
def test_which_currencies_are_tax_inclusive_is_a_setting(world, localstripe):
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    page = text(client_for(world["olga"]).get(f"/orgs/{world['org'].pk}/credits/"))
    assert '<span class="pack-price">$40.00 (tax included)</span>' in page
    assert "<dt>Price</dt> <dd>$40.00 (tax included)</dd>" in terms(page)


def test_a_pack_in_another_currency_is_refused_and_nothing_is_charged(world, localstripe):
    # given Olga's organization billed in dollars, with a card on file
    org = world["org"]
    card_on_file(localstripe, org, CARD_SUCCEEDS)
    # when a POST names the yen pack (not offered to her)
    response = buy(client_for(world["olga"]), org, pack="credits-1000-jpy")
    # then the dialog says why, and nothing is recorded, charged or granted
    assert response.status_code == 200
    assert "HX-Trigger" not in response
    assert re.search(
        r'role="alert">.*</svg> This credit pack is not sold in your organization&#x27;s currency\.</p>', text(response)
    )
    assert CreditPurchase.objects.filter(organization=org).count() == 0
    assert localstripe.charges() == []
    assert_nothing_granted(org)


def test_a_pack_in_another_currency_is_refused_in_japanese(world, localstripe):
    on_a_yen_plan(world["org"])
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})

    response = buy(client, world["org"], pack="credits-1000")

    assert "このクレジットパックは、組織のお支払い通貨では販売していません。" in text(response)
    assert CreditPurchase.objects.filter(organization=world["org"]).count() == 0
    assert localstripe.charges() == []


def terms(page: str) -> str:
    """The buy dialog's order summary (its <dl>), whitespace collapsed."""
    start = page.index('<dl class="buy-terms" aria-labelledby="buy-terms-title" data-buy-terms>')
    return page[start : page.index("</dl>", start)]


def test_the_final_confirmation_states_what_the_law_asks_for_each_pack(world, localstripe):
    # given Olga's Visa 4242 on file and the demo dollar packs (credits-1000 first, selected)
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    # when she opens the dialog on the credits page
    summary = terms(text(client_for(world["olga"]).get(f"/orgs/{world['org'].pk}/credits/")))
    # then the summary states quantity, price (dollars: before tax), card and timing, delivery, expiry
    # and the cancellation terms, in that order; only the selected pack's rows are shown
    assert (
        '<div data-pack-terms="credits-1000"> <dt>Quantity</dt> <dd>1,000 credits</dd> </div> '
        '<div data-pack-terms="credits-1000"> <dt>Price</dt> <dd>$40.00</dd> </div>'
    ) in summary
    assert ('<div data-pack-terms="credits-2500" hidden> <dt>Price</dt> <dd>$100.00</dd> </div>') in summary
    assert (
        "<div> <dt>Payment method</dt> <dd>Your Visa •••• 4242 (the card on file)</dd> </div> "
        "<div> <dt>Payment timing</dt> <dd>Charged at once when you press the Pay button below.</dd> </div> "
        "<div> <dt>Delivery</dt> <dd>The credits are added as soon as the payment succeeds.</dd> </div>"
    ) in summary
    assert (
        '<div data-pack-terms="credits-1000"> <dt>Expiry of credits</dt> '
        "<dd>The credits expire 365 days after the payment.</dd> </div>"
    ) in summary
    assert summary.count("<dt>Quantity</dt>") == summary.count("<dt>Expiry of credits</dt>") == 2
    assert summary.count(" hidden>") == 3
    credits_url = f"/orgs/{world['org'].pk}/credits/"
    assert (
        '<div> <dt>Cancellation and refunds</dt> <dd> <p class="policy">'
        "Purchases cannot be cancelled once the credits are added. Unused credits that have not expired can be "
        "refunded on request: the unused part of the price, pro rata, goes back to the card that paid.</p> "
        f'<a href="{credits_url}#refund-policy" target="_blank" rel="noopener">'
        "Refund terms in full (opens in a new tab)</a></dd> </div>"
    ) in summary
    assert summary.index("Quantity") < summary.index("Price") < summary.index("Payment method")
    assert summary.index("Delivery") < summary.index("Expiry of credits") < summary.index("Cancellation")


def test_a_pack_without_expiry_says_so(world, localstripe):
    CreditPack.objects.filter(key="credits-2500").update(expires_after_days=None)
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)

    summary = terms(text(client_for(world["olga"]).get(f"/orgs/{world['org'].pk}/")))

    assert (
        '<div data-pack-terms="credits-2500" hidden> <dt>Expiry of credits</dt> '
        "<dd>The credits do not expire.</dd> </div>"
    ) in summary


def test_in_japanese_the_final_confirmation_reads_as_the_law_asks(world, localstripe):
    on_a_yen_plan(world["org"])
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})

    summary = terms(text(client.get(f"/orgs/{world['org'].pk}/credits/")))

    assert "<dt>数量</dt> <dd>1,000 クレジット</dd>" in summary
    assert "<dt>価格</dt> <dd>6,000円（税込）</dd>" in summary
    assert "<dt>お支払い方法</dt> <dd>登録済みの Visa •••• 4242</dd>" in summary
    assert "<dt>お支払い時期</dt> <dd>下のお支払いボタンを押した時点で、直ちに請求されます。</dd>" in summary
    assert "<dt>提供時期</dt> <dd>お支払いが完了するとすぐにクレジットが追加されます。</dd>" in summary
    assert "<dt>有効期限</dt> <dd>クレジットの有効期限は、お支払いから 365 日後です。</dd>" in summary
    assert "<dt>キャンセル・返金</dt>" in summary
    assert "クレジットの追加後は、購入をキャンセルできません。有効期限内の未使用クレジットは" in summary
    assert "返金条件の全文（新しいタブで開きます）</a>" in summary


def test_in_japanese_yen_have_no_minor_unit_and_include_tax(world, localstripe):
    on_a_yen_plan(world["org"])
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})

    page = text(client.get(f"/orgs/{world['org'].pk}/credits/"))

    assert '<span class="pack-price">6,000円（税込）</span>' in page
    assert 'data-pay-label="6,000円 を支払う"' in page
    assert "6,000円 を支払う</button>" in page
    assert "登録済みの Visa •••• 4242" in page


def test_in_japanese_dollars_are_shown_before_tax(world, localstripe):
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["olga"])
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})

    page = text(client.get(f"/orgs/{world['org'].pk}/credits/"))

    assert '<span class="pack-price">$40.00</span>' in page
    assert "$40.00 を支払う</button>" in page
    assert "（税込）" not in page
    assert "6,000円" not in page


def test_without_a_card_the_dialog_offers_to_add_one(world, localstripe):
    page = text(client_for(world["olga"]).get(f"/orgs/{world['org'].pk}/"))

    assert "Add a card" in page
    assert "data-card-element" in page
    assert "data-pay-button" not in page
    assert 'data-stripe-js="/stripe-js/local.js"' in page  # localstripe's script, wrapped by us


def test_the_owner_buys_with_4242_and_the_credits_arrive_at_once(world, localstripe):
    org = world["org"]
    card_on_file(localstripe, org, CARD_SUCCEEDS)
    client = client_for(world["olga"])
    token = uuid.uuid4().hex

    # when Olga confirms the $40.00 pack
    response = buy(client, org, token=token)

    # then the dialog says so, the page is told to refresh, and the credits and ledger are there
    assert response.status_code == 200
    assert json.loads(response["HX-Trigger"]) == {"dashboard:refresh": True}
    assert "1,000 credits added" in text(response)
    purchase = CreditPurchase.objects.get(organization=org)
    assert (purchase.status, purchase.amount, purchase.currency) == ("succeeded", 4000, "usd")
    assert (purchase.request_key, purchase.actor_id) == (f"dashboard:{token}", world["olga"].pk)
    assert balance(org) == Decimal("1000")
    assert ledger(org) == [("grant", Decimal("1000"), Decimal("1000"), f"grant:{purchase.payment_intent_id}")]
    # and the overview's refresh says it once in the live status region
    live = client.get(f"/orgs/{org.pk}/live/", HTTP_HX_REQUEST="true")
    assert '<p hx-swap-oob="innerHTML:#live-status">1,000 credits added</p>' in text(live)
    again = client.get(f"/orgs/{org.pk}/live/", HTTP_HX_REQUEST="true")
    assert '<p hx-swap-oob="innerHTML:#live-status"></p>' in text(again)


def test_a_repeated_post_of_the_same_dialog_charges_once(world, localstripe):
    org = world["org"]
    card_on_file(localstripe, org, CARD_SUCCEEDS)
    client = client_for(world["olga"])
    token = uuid.uuid4().hex

    first = buy(client, org, token=token)
    second = buy(client, org, token=token)

    assert (first.status_code, second.status_code) == (200, 200)
    assert "1,000 credits added" in text(second)
    assert CreditPurchase.objects.filter(organization=org).count() == 1
    assert len(localstripe.charges()) == 1
    assert balance(org) == Decimal("1000")


def test_a_card_declined_at_charge_shows_the_reason_and_changes_nothing(world, localstripe):
    org = world["org"]
    card_on_file(localstripe, org, CARD_DECLINED_ON_CHARGE)

    response = buy(client_for(world["olga"]), org)

    assert response.status_code == 200
    assert "HX-Trigger" not in response
    assert re.search(r'role="alert">.*Your card was declined\.', text(response))
    assert CreditPurchase.objects.get(organization=org).status == "failed"
    assert_nothing_granted(org)


def test_the_decline_reads_in_japanese(world, localstripe):
    org = world["org"]
    card_on_file(localstripe, org, CARD_DECLINED_ON_CHARGE)
    client = client_for(world["olga"])
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})

    response = buy(client, org)

    assert "カードが拒否されました。" in text(response)
    assert_nothing_granted(org)


def test_3d_secure_returns_the_client_secret_and_settles_after_authentication(world, localstripe):
    org = world["org"]
    card_on_file(localstripe, org, CARD_REQUIRES_ACTION)
    client = client_for(world["olga"])

    # when the charge needs 3-D Secure
    response = buy(client, org)
    purchase = CreditPurchase.objects.get(organization=org)
    secret = localstripe.payment_intent(purchase.payment_intent_id)["client_secret"]
    settle_url = reverse("org_buy_settle", kwargs={"org_id": org.pk, "purchase_id": purchase.pk})

    # then the dialog carries what Stripe.js needs, and nothing is granted yet
    assert purchase.status == "requires_action"
    assert f'data-client-secret="{secret}"' in text(response)
    assert f'data-settle-url="{settle_url}"' in text(response)
    assert_nothing_granted(org)

    # when the bank's challenge is completed and the browser posts back
    localstripe.payment_intent_authenticate(purchase.payment_intent_id)
    settled = client.post(settle_url, HTTP_HX_REQUEST="true")

    # then the credits arrive
    assert settled.status_code == 200
    assert json.loads(settled["HX-Trigger"]) == {"dashboard:refresh": True}
    assert "1,000 credits added" in text(settled)
    assert balance(org) == Decimal("1000")
    assert CreditPurchase.objects.get(pk=purchase.pk).status == "succeeded"


def test_3d_secure_failed_shows_the_bank_refused(world, localstripe):
    org = world["org"]
    card_on_file(localstripe, org, CARD_REQUIRES_ACTION)
    client = client_for(world["olga"])
    buy(client, org)
    purchase = CreditPurchase.objects.get(organization=org)

    localstripe.payment_intent_authenticate(purchase.payment_intent_id, success=False)
    settled = client.post(reverse("org_buy_settle", kwargs={"org_id": org.pk, "purchase_id": purchase.pk}))

    assert "HX-Trigger" not in settled
    assert "Your bank did not confirm this payment." in text(settled)
    assert CreditPurchase.objects.get(pk=purchase.pk).status == "failed"
    assert_nothing_granted(org)


def test_adding_a_card_saves_it_and_offers_to_pay(world, localstripe):
    org = world["org"]
    client = client_for(world["olga"])
    setup = client.post(reverse("org_card_setup", kwargs={"org_id": org.pk}))
    assert setup.status_code == 200
    assert setup.json()["client_secret"].startswith("seti_")
    pm = localstripe.payment_method_create(CARD_SUCCEEDS)  # what confirmCardSetup gives the browser

    response = client.post(reverse("org_card_default", kwargs={"org_id": org.pk}), {"payment_method": pm})

    assert response.status_code == 200
    page = text(response)
    assert "Your card is saved. You can buy now." in page
    assert "Your Visa •••• 4242 (the card on file)" in page
    assert "Pay $40.00" in page
    customer = StripeCustomer.objects.get(organization=org)
    assert (customer.default_payment_method_id, customer.card_brand, customer.card_last4) == (pm, "visa", "4242")


def test_a_card_declined_when_added_shows_the_reason_and_is_not_saved(world, localstripe):
    org = world["org"]
    client = client_for(world["olga"])
    pm = localstripe.payment_method_create(CARD_DECLINED_ON_ATTACH)

    response = client.post(reverse("org_card_default", kwargs={"org_id": org.pk}), {"payment_method": pm})

    assert response.status_code == 200
    assert re.search(r'role="alert">.*Your card was declined\.', text(response))
    assert StripeCustomer.objects.get(organization=org).default_payment_method_id == ""
    assert "Add a card" in text(response)


def test_a_malformed_form_is_a_400(world, localstripe):
    client = client_for(world["olga"])
    url = reverse("org_buy", kwargs={"org_id": world["org"].pk})

    assert client.post(url, {"pack": "credits-1000", "token": "nope"}).status_code == 400
    assert client.post(url, {"token": uuid.uuid4().hex}).status_code == 400
    assert CreditPurchase.objects.count() == 0


def test_an_unknown_pack_shows_a_message_and_charges_nothing(world, localstripe):
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)

    response = buy(client_for(world["olga"]), world["org"], pack="no-such-pack")

    assert "There is no credit pack" in text(response)
    assert localstripe.charges() == []


def _action_urls(org_id: int, purchase_id: int = 1) -> list[str]:
    return [
        reverse("org_buy", kwargs={"org_id": org_id}),
        reverse("org_buy_settle", kwargs={"org_id": org_id, "purchase_id": purchase_id}),
        reverse("org_card_setup", kwargs={"org_id": org_id}),
        reverse("org_card_default", kwargs={"org_id": org_id}),
    ]


def test_a_member_cannot_buy_or_add_a_card(world, localstripe):
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    client = client_for(world["mia"])

    codes = [
        client.post(url, {"pack": "credits-1000", "token": uuid.uuid4().hex}).status_code
        for url in _action_urls(world["org"].pk)
    ]

    assert codes == [403, 403, 403, 403]
    assert "data-pay-button" not in text(client.get(f"/orgs/{world['org'].pk}/"))
    assert CreditPurchase.objects.count() == 0
    assert localstripe.charges() == []


def test_another_organization_is_not_found(world, localstripe):
    card_on_file(localstripe, world["other"], CARD_SUCCEEDS)
    client = client_for(world["olga"])

    codes = [
        client.post(url, {"pack": "credits-1000", "token": uuid.uuid4().hex}).status_code
        for url in _action_urls(world["other"].pk)
    ]

    assert codes == [404, 404, 404, 404]
    assert CreditPurchase.objects.count() == 0


def test_settling_a_purchase_of_another_organization_is_not_found(world, localstripe):
    card_on_file(localstripe, world["other"], CARD_SUCCEEDS)
    buy(client_for(world["otto"]), world["other"])
    purchase = CreditPurchase.objects.get(organization=world["other"])

    response = client_for(world["olga"]).post(
        reverse("org_buy_settle", kwargs={"org_id": world["org"].pk, "purchase_id": purchase.pk})
    )

    assert response.status_code == 404


def test_get_is_not_allowed(world, localstripe):
    assert client_for(world["olga"]).get(reverse("org_buy", kwargs={"org_id": world["org"].pk})).status_code == 405


def test_the_credits_page_refresh_shows_the_new_balance_and_says_it_once(world, localstripe):
    org = world["org"]
    card_on_file(localstripe, org, CARD_SUCCEEDS)
    client = client_for(world["olga"])
    buy(client, org)

    refresh = text(client.get(f"/orgs/{org.pk}/credits/", HTTP_HX_REQUEST="true"))
    again = text(client.get(f"/orgs/{org.pk}/credits/", HTTP_HX_REQUEST="true"))

    assert '<p class="big" id="credits-balance">1,000 <span class="unit">credits</span></p>' in refresh
    assert '<p hx-swap-oob="innerHTML:#live-status">1,000 credits added</p>' in refresh
    assert "hx-swap-oob" not in again
