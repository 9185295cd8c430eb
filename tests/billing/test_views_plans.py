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
from plans.models import Subscription
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


def test_a_card_needing_3d_secure_says_the_bank_must_confirm_and_links_to_credits(world, localstripe):
    # given a card whose bank asks for confirmation
    card_on_file(localstripe, world["org"], CARD_REQUIRES_ACTION)
    # when Olga confirms the Plus plan
    response = change(client_for(world["olga"]), world["org"], "plus")
    # then the plan is unchanged, the purchase waits for the bank, and the page says so with a link
    assert plan_key(world["org"]) == "free"
    statuses = list(CreditPurchase.objects.filter(organization=world["org"]).values_list("status", flat=True))
    assert statuses == [PurchaseStatus.REQUIRES_ACTION]
    page = text(response)
    assert "Your bank asks you to confirm this payment, so your plan has not changed yet." in page
    assert f'<a href="/orgs/{world["org"].pk}/credits/">credits page</a>' in page


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
