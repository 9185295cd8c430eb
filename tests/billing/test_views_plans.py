"""The plans page: owners upgrade to a paid plan (charged the full price now, against a real
localstripe) or move back to the free plan; members see it read-only; other organizations 404.

Catalogue: the demo one (free is the default, plus = $20.00 a month, pro = $200.00 a month).
"""

from __future__ import annotations

import re

from django.test import Client
from django.urls import reverse

from billing.models import CreditPurchase, PurchaseKind, PurchaseStatus
from billing.services.provision import subscription_change
from core.clock import now
from plans.models import Plan, Subscription
from tests.billing.payment_support import balance
from tests.billing.stripe_fixtures import CARD_DECLINED_ON_CHARGE, CARD_REQUIRES_ACTION, CARD_SUCCEEDS
from tests.billing.view_support import card_on_file, client_for


def plan_key(org) -> str:
    return Subscription.objects.select_related("plan").get(organization=org).plan.key


def change(client: Client, org, plan: str):
    return client.post(reverse("org_plan_change", kwargs={"org_id": org.pk}), {"plan": plan}, follow=True)


def text(response) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def test_the_owner_sees_the_price_before_confirming(world):
    # given Olga on the free plan
    # when she opens the plans page
    page = text(client_for(world["olga"]).get(f"/orgs/{world['org'].pk}/plans/"))
    # then each paid plan states the charge before the confirm button
    assert "You will be charged $20.00 now for a new monthly period starting today." in page
    assert "You will be charged $200.00 now for a new monthly period starting today." in page
    assert page.count('name="plan"') == 2
    assert "Pay $20.00 and change plan" in page


def test_a_price_in_a_tax_inclusive_currency_says_so_and_a_dollar_price_does_not(world):
    # given a plan sold in yen (TAX_INCLUSIVE_CURRENCIES: JPY by default) beside the dollar plans
    Plan.objects.create(key="plus-jpy", name="Plus (JPY)", price_amount=3000, currency="jpy")
    # when Olga opens the plans page
    page = text(client_for(world["olga"]).get(f"/orgs/{world['org'].pk}/plans/"))
    # then the yen price and its charge say tax included; the dollar ones do not; the button names the amount
    assert re.search(r'<p class="price">¥3,000 \(tax included\) <span', page)
    assert re.search(r'<p class="price">\$20.00 <span', page)
    assert "You will be charged ¥3,000 (tax included) now for a new monthly period starting today." in page
    assert "You will be charged $20.00 now for a new monthly period starting today." in page
    assert "Pay ¥3,000 and change plan" in page


def test_the_owner_upgrades_with_4242_and_the_purchase_is_recorded(world, localstripe):
    # given Olga on the free plan with a Visa 4242 on file
    card_on_file(localstripe, world["org"], CARD_SUCCEEDS)
    # when she confirms the Plus plan
    response = change(client_for(world["olga"]), world["org"], "plus")
    # then the plan changed, one paid plan purchase of $20.00 is recorded, and the page says so
    assert response.status_code == 200
    assert plan_key(world["org"]) == "plus"
    purchases = list(
        CreditPurchase.objects.filter(organization=world["org"]).values_list("kind", "status", "amount", "currency")
    )
    assert purchases == [(PurchaseKind.PLAN_UPGRADE, PurchaseStatus.SUCCEEDED, 2000, "usd")]
    assert "You are now on the Plus plan." in text(response)


def test_a_declined_card_leaves_the_plan(world, localstripe):
    # given a card that is declined when charged
    card_on_file(localstripe, world["org"], CARD_DECLINED_ON_CHARGE)
    # when Olga confirms the Plus plan
    response = change(client_for(world["olga"]), world["org"], "plus")
    # then the plan is still free, the purchase failed, and the decline is shown
    assert plan_key(world["org"]) == "free"
    statuses = list(CreditPurchase.objects.filter(organization=world["org"]).values_list("status", flat=True))
    assert statuses == [PurchaseStatus.FAILED]
    assert "Your card was declined." in text(response)


def upgrade_urls(org, purchase) -> tuple[str, str]:
    kwargs = {"org_id": org.pk, "purchase_id": purchase.pk}
    return reverse("org_plan_authenticate", kwargs=kwargs), reverse("org_plan_settle", kwargs=kwargs)


def upgrade_needing_3d_secure(world, localstripe):
    """Olga, with a card whose bank asks for confirmation, confirms the Plus plan; returns the
    response (redirects followed) and the upgrade's purchase."""
    card_on_file(localstripe, world["org"], CARD_REQUIRES_ACTION)
    response = change(client_for(world["olga"]), world["org"], "plus")
    return response, CreditPurchase.objects.get(organization=world["org"])


def test_a_card_needing_3d_secure_opens_the_banks_challenge_on_the_plans_page(world, localstripe):
    # given a card whose bank asks for confirmation
    # when Olga confirms the Plus plan
    response, purchase = upgrade_needing_3d_secure(world, localstripe)
    # then the plan is unchanged, the purchase waits for the bank, and the plans page says so and
    # carries the form that runs the challenge at once (Stripe.js) and then settles the payment
    assert plan_key(world["org"]) == "free"
    assert (purchase.kind, purchase.status) == (PurchaseKind.PLAN_UPGRADE, PurchaseStatus.REQUIRES_ACTION)
    assert response.redirect_chain == [(f"/orgs/{world['org'].pk}/plans/?bank=confirm", 302)]
    authenticate_url, settle_url = upgrade_urls(world["org"], purchase)
    page = text(response)
    assert "Your bank asks you to confirm this payment (3-D Secure)." in page
    assert (
        "The payment of $20.00 for the Plus plan waits for your bank's confirmation; "
        "your plan changes as soon as it is confirmed."
    ) in page
    assert (
        f'<form method="post" action="{settle_url}" data-confirm-upgrade data-authenticate-url="{authenticate_url}" '
        'data-stripe-js="/stripe-js/local.js" data-stripe-key="'
    ) in page
    assert " data-autostart>" in page
    assert '<button type="submit" class="button button-primary">Confirm with your bank</button>' in page
    assert '<script src="/static/js/payments.js" defer></script>' in page
    # and coming back to the page later offers the same, without starting by itself
    later = text(client_for(world["olga"]).get(f"/orgs/{world['org'].pk}/plans/"))
    assert f'data-authenticate-url="{authenticate_url}"' in later
    assert "data-autostart" not in later


def test_the_challenge_gets_the_payments_client_secret(world, localstripe):
    _response, purchase = upgrade_needing_3d_secure(world, localstripe)
    authenticate_url, _settle_url = upgrade_urls(world["org"], purchase)

    answer = client_for(world["olga"]).post(authenticate_url)

    assert answer.status_code == 200
    assert answer.json() == {"client_secret": localstripe.payment_intent(purchase.payment_intent_id)["client_secret"]}


def test_after_the_bank_confirms_the_plan_changes(world, localstripe):
    # given an upgrade waiting for the bank
    _response, purchase = upgrade_needing_3d_secure(world, localstripe)
    _authenticate_url, settle_url = upgrade_urls(world["org"], purchase)
    # when the bank's challenge is completed (Stripe.js) and the page posts back
    localstripe.payment_intent_authenticate(purchase.payment_intent_id)
    response = client_for(world["olga"]).post(settle_url, follow=True)
    # then the plan is Plus, paid for a fresh period, and the page says so without the notice
    assert response.redirect_chain == [(f"/orgs/{world['org'].pk}/plans/", 302)]
    assert plan_key(world["org"]) == "plus"
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.SUCCEEDED
    subscription = Subscription.objects.get(organization=world["org"])
    assert (purchase.period_start, purchase.period_end) == (subscription.anchor, subscription.paid_through)
    page = text(response)
    assert "You are now on the Plus plan." in page
    assert "data-confirm-upgrade" not in page
    # and a second post (a reload) changes nothing more
    again = client_for(world["olga"]).post(settle_url, follow=True)
    assert "You are now on the Plus plan." in text(again)
    assert CreditPurchase.objects.filter(organization=world["org"]).count() == 1


def test_when_the_bank_refuses_the_plan_stays_and_the_page_says_why(world, localstripe):
    _response, purchase = upgrade_needing_3d_secure(world, localstripe)
    _authenticate_url, settle_url = upgrade_urls(world["org"], purchase)

    localstripe.payment_intent_authenticate(purchase.payment_intent_id, success=False)
    response = client_for(world["olga"]).post(settle_url, follow=True)

    assert plan_key(world["org"]) == "free"
    assert CreditPurchase.objects.get(pk=purchase.pk).status == PurchaseStatus.FAILED
    page = text(response)
    assert "Your bank did not confirm this payment." in page
    assert "data-confirm-upgrade" not in page
    # and the challenge of a payment that no longer waits is refused
    authenticate_url, _ = upgrade_urls(world["org"], purchase)
    refused = client_for(world["olga"]).post(authenticate_url)
    assert (refused.status_code, refused.json()) == (409, {"error": "This payment does not wait for your bank."})


def test_posting_back_before_the_bank_confirms_keeps_waiting(world, localstripe):
    _response, purchase = upgrade_needing_3d_secure(world, localstripe)
    _authenticate_url, settle_url = upgrade_urls(world["org"], purchase)

    response = client_for(world["olga"]).post(settle_url, follow=True)

    assert plan_key(world["org"]) == "free"
    assert CreditPurchase.objects.get(pk=purchase.pk).status == PurchaseStatus.REQUIRES_ACTION
    page = text(response)
    assert "Your bank has not confirmed this payment yet, so your plan has not changed." in page
    assert "Confirm with your bank" in page


def test_the_upgrade_challenge_is_for_owners_of_the_organization_only(world, localstripe):
    # given Olga's upgrade waiting for the bank, and a credit pack purchase of Otto's
    _response, purchase = upgrade_needing_3d_secure(world, localstripe)
    card_on_file(localstripe, world["other"], CARD_SUCCEEDS)
    client_for(world["otto"]).post(
        reverse("org_buy", kwargs={"org_id": world["other"].pk}), {"pack": "credits-1000", "token": "0" * 32}
    )
    pack_purchase = CreditPurchase.objects.get(organization=world["other"])
    # when Mia (a member), Otto (another org), or Olga with a purchase that is not an upgrade posts
    mia = [client_for(world["mia"]).post(url).status_code for url in upgrade_urls(world["org"], purchase)]
    otto = [client_for(world["otto"]).post(url).status_code for url in upgrade_urls(world["org"], purchase)]
    own_pack = [client_for(world["otto"]).post(url).status_code for url in upgrade_urls(world["other"], pack_purchase)]
    # then each is refused and the upgrade still waits
    assert (mia, otto, own_pack) == ([403, 403], [404, 404], [404, 404])
    assert CreditPurchase.objects.get(pk=purchase.pk).status == PurchaseStatus.REQUIRES_ACTION
    # and a member reads the notice without the form
    page = text(client_for(world["mia"]).get(f"/orgs/{world['org'].pk}/plans/"))
    assert "Your bank asks you to confirm this payment (3-D Secure)." in page
    assert "An owner or admin can confirm it on this page." in page
    assert "data-confirm-upgrade" not in page


def test_in_japanese_the_bank_confirmation_is_explained(world, localstripe):
    card_on_file(localstripe, world["org"], CARD_REQUIRES_ACTION)
    client = client_for(world["olga"])
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})

    page = text(change(client, world["org"], "plus"))

    assert "銀行がこのお支払いの確認（3D セキュア）を求めています。" in page
    assert "Plus プランのお支払い（$20.00）は銀行の確認待ちです。確認が完了するとすぐにプランが変更されます。" in page
    assert "銀行で確認する</button>" in page


def test_no_card_asks_for_one_and_changes_nothing(world):
    response = change(client_for(world["olga"]), world["org"], "plus")

    assert plan_key(world["org"]) == "free"
    assert CreditPurchase.objects.filter(organization=world["org"]).count() == 0
    assert "Add a card before choosing a paid plan." in text(response)


def test_the_owner_downgrades_to_free_and_keeps_the_credits(world):
    # given Olga's org on Plus
    subscription_change(organization_id=world["org"].pk, plan_key="plus", now=now())
    credits_before = balance(world["org"])
    client = client_for(world["olga"])
    page = text(client.get(f"/orgs/{world['org'].pk}/plans/"))
    assert "nothing is charged, and your credits stay." in page
    # when she moves to Free
    response = change(client, world["org"], "free")
    # then the plan is free, nothing was charged, credits are unchanged
    assert plan_key(world["org"]) == "free"
    assert CreditPurchase.objects.filter(organization=world["org"]).count() == 0
    assert balance(world["org"]) == credits_before
    assert "You are now on the Free plan." in text(response)


def test_a_member_sees_plans_read_only_and_cannot_change(world):
    client = client_for(world["mia"])

    page = text(client.get(f"/orgs/{world['org'].pk}/plans/"))
    response = client.post(reverse("org_plan_change", kwargs={"org_id": world["org"].pk}), {"plan": "plus"})

    assert 'name="plan"' not in page
    assert "Only owners and admins can change the plan." in page
    assert response.status_code == 403
    assert plan_key(world["org"]) == "free"


def test_another_organization_is_404(world):
    client = client_for(world["otto"])

    page = client.get(f"/orgs/{world['org'].pk}/plans/")
    response = client.post(reverse("org_plan_change", kwargs={"org_id": world["org"].pk}), {"plan": "plus"})

    assert page.status_code == 404
    assert response.status_code == 404
    assert plan_key(world["org"]) == "free"


def test_an_unknown_plan_changes_nothing(world):
    response = change(client_for(world["olga"]), world["org"], "gold")

    assert plan_key(world["org"]) == "free"
    assert "Choose a plan." in text(response)


def test_in_japanese_the_charge_is_stated_before_confirming(world):
    client = client_for(world["olga"])
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})

    page = text(client.get(f"/orgs/{world['org'].pk}/plans/"))

    assert "本日から始まる新しい1か月分として、今すぐ$20.00が請求されます。" in page
