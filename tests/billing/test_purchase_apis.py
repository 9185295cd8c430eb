"""POST/GET /api/v1/organizations/{id}/purchases against a real localstripe: the four outcomes,
Idempotency-Key replays that never charge twice, receipts, and no way into another organization."""

from __future__ import annotations

import pytest

from billing.models import CreditPurchase
from tests.billing.payment_support import org_with_card, org_with_owner, pack
from tests.billing.stripe_fixtures import CARD_DECLINED_ON_CHARGE, CARD_REQUIRES_ACTION, CARD_SUCCEEDS

pytestmark = pytest.mark.django_db


def url(org) -> str:
    return f"/api/v1/organizations/{org.pk}/purchases"


def buy(client, org, pack_key: str = "pack-100", key: str | None = "buy-1"):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(url(org), {"pack": pack_key}, format="json", **headers)


@pytest.fixture
def pack100(db):
    return pack()


def test_buy_with_a_customer_key_then_replay_charges_once(localstripe, pack100, key_client_for):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    client = key_client_for(org)
    # when the same purchase is posted twice with one Idempotency-Key (a retry after a timeout)
    first = buy(client, org)
    second = buy(client, org)
    # then it is paid once; the retry answers the same, marked as a replay
    purchase = CreditPurchase.objects.get()
    assert first.status_code == 201
    assert first.json() == {
        "id": purchase.pk,
        "organization": org.pk,
        "kind": "purchase",
        "pack": "pack-100",
        "status": "succeeded",
        "credits": "100",
        "amount": 1000,
        "amount_decimal": "10.00",
        "currency": "usd",
        "card_brand": "visa",
        "card_last4": "4242",
        "failure_code": None,
        "failure_message": None,
        "created_at": purchase.created_at.isoformat(),
        "paid_at": purchase.paid_at.isoformat() if purchase.paid_at else None,
        "balance": "100",
    }
    assert first.get("Idempotent-Replayed") is None
    assert (second.status_code, second.json(), second["Idempotent-Replayed"]) == (201, first.json(), "true")
    assert len(localstripe.request("GET", "/v1/payment_intents")["data"]) == 1
    assert purchase.request_key == "buy-1"


def test_a_new_key_is_a_new_purchase_and_a_reused_key_for_another_pack_is_refused(localstripe, pack100, service_client):
    pack("pack-500", credits="500", price=4000)
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    assert buy(service_client, org, key="a").status_code == 201
    assert buy(service_client, org, key="b").status_code == 201
    reused = buy(service_client, org, "pack-500", key="a")
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert CreditPurchase.objects.count() == 2


def test_a_pack_in_another_currency_than_the_organizations_is_refused_before_any_charge(
    localstripe, pack100, service_client
):
    # Given an organization billed in dollars, with a card, and a pack sold in yen
    pack("yen-300", credits="300", price=3000, currency="jpy")
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    # When a service buys the yen pack for it
    response = buy(service_client, org, "yen-300")
    # Then it is refused, and nothing is recorded or charged
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "pack_currency_mismatch"
    assert CreditPurchase.objects.count() == 0
    assert localstripe.request("GET", "/v1/payment_intents")["data"] == []


def test_declined_card_is_a_402_with_the_reason_and_replays_the_same(localstripe, pack100, key_client_for):
    org, _ = org_with_card(localstripe, CARD_DECLINED_ON_CHARGE)
    client = key_client_for(org)
    first = buy(client, org)
    assert first.status_code == 402
    error = first.json()["error"]
    assert (error["code"], error["message"], error["purchase"]["status"]) == (
        "card_declined",
        "Your card was declined.",
        "failed",
    )
    again = buy(client, org)
    assert (again.status_code, again.json()) == (402, first.json())


def test_3d_secure_is_a_202_with_the_client_secret_also_on_replay(localstripe, pack100, key_client_for):
    org, _ = org_with_card(localstripe, CARD_REQUIRES_ACTION)
    client = key_client_for(org)
    first = buy(client, org)
    purchase = CreditPurchase.objects.get()
    secret = localstripe.payment_intent(purchase.payment_intent_id)["client_secret"]
    assert first.status_code == 202
    assert (first.json()["status"], first.json()["client_secret"]) == ("requires_action", secret)
    again = buy(client, org)
    assert (again.status_code, again.json()["client_secret"]) == (202, secret)


def test_bad_requests(localstripe, pack100, service_client):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    missing_key = buy(service_client, org, key=None)
    assert (missing_key.status_code, missing_key.json()["error"]["code"]) == (400, "idempotency_key_missing")
    no_pack = service_client.post(url(org), {}, format="json", HTTP_IDEMPOTENCY_KEY="x")
    assert (no_pack.status_code, no_pack.json()["error"]["code"]) == (400, "validation_error")
    unknown = buy(service_client, org, "nope", key="y")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "pack_not_found")
    cardless, _ = org_with_owner()
    no_card = buy(service_client, cardless, key="z")
    assert (no_card.status_code, no_card.json()["error"]["code"]) == (409, "card_required")
    assert CreditPurchase.objects.count() == 0


def test_another_organization_looks_absent(localstripe, pack100, key_client_for):
    org_a, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    org_b, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    client_a = key_client_for(org_a)
    for response in (buy(client_a, org_b), client_a.get(url(org_b))):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "organization_not_found"
    assert CreditPurchase.objects.count() == 0


def test_receipts_newest_first_with_paging(localstripe, pack100, key_client_for, service_client):
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    client = key_client_for(org)
    ids = [buy(client, org, key=f"k{i}").json()["id"] for i in range(3)]
    page = client.get(url(org), {"limit": 2})
    assert page.status_code == 200
    body = page.json()
    assert [r["id"] for r in body["data"]] == [ids[2], ids[1]]
    assert body["next"] == ids[1]
    receipt = body["data"][0]
    assert (receipt["description"], receipt["amount"], receipt["card_last4"], receipt["credits_granted"]) == (
        "100 credits",
        1000,
        "4242",
        "100",
    )
    rest = client.get(url(org), {"limit": 2, "before": body["next"]}).json()
    assert ([r["id"] for r in rest["data"]], rest["next"]) == ([ids[0]], None)
    assert service_client.get(url(org)).json()["data"] == body["data"] + rest["data"]
    assert service_client.get("/api/v1/organizations/999999/purchases").status_code == 404
    too_many = client.get(url(org), {"limit": 101})
    assert (too_many.status_code, too_many.json()["error"]["code"]) == (400, "validation_error")
