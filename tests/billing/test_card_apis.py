"""Card on file over HTTP (/api/v1/organizations/{id}/cards...) against a real localstripe:
setup, list, default, remove; Idempotency-Key on POST; another organization's cards look absent."""

from __future__ import annotations

import pytest
from django.conf import settings

from billing.models import StripeCustomer
from tests.billing.payment_support import org_with_card, org_with_owner
from tests.billing.stripe_fixtures import CARD_DECLINED_ON_ATTACH, CARD_SUCCEEDS

pytestmark = pytest.mark.django_db


def base(org) -> str:
    return f"/api/v1/organizations/{org.pk}/cards"


def post(client, path, key: str | None = "k-1"):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(path, format="json", **headers)


def test_setup_returns_a_setup_intent_secret_and_the_publishable_key(localstripe, key_client_for):
    org, _ = org_with_owner()
    client = key_client_for(org)
    first = post(client, f"{base(org)}/setup")
    again = post(client, f"{base(org)}/setup")
    assert first.status_code == 201
    body = first.json()
    intent = localstripe.request("GET", f"/v1/setup_intents/{body['setup_intent']}")
    customer = StripeCustomer.objects.get(organization=org)
    assert (intent["customer"], intent["client_secret"]) == (customer.customer_id, body["client_secret"])
    assert body["publishable_key"] == settings.STRIPE_TEST_PUBLIC_KEY
    # a retry with the same key answers the same SetupIntent, marked as a replay
    assert (again.status_code, again.json(), again["Idempotent-Replayed"]) == (201, body, "true")
    assert len(localstripe.request("GET", "/v1/setup_intents")["data"]) == 1


def test_setup_needs_an_idempotency_key(localstripe, key_client_for):
    org, _ = org_with_owner()
    response = post(key_client_for(org), f"{base(org)}/setup", key=None)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "idempotency_key_missing")


def test_list_set_default_and_remove(localstripe, key_client_for):
    # given an organization with a default 4242 card and a second card confirmed by Stripe.js
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    client = key_client_for(org)
    first_pm = org.stripe_customer.default_payment_method_id
    second_pm = localstripe.payment_method_create("5555555555554444")
    # when the second is made the default
    made = post(client, f"{base(org)}/{second_pm}/default")
    assert made.status_code == 200
    brand = localstripe.request("GET", f"/v1/payment_methods/{second_pm}")["card"]["brand"]
    assert made.json() == {
        "id": second_pm,
        "brand": brand,
        "last4": "4444",
        "exp_month": 12,
        "exp_year": 2034,
        "default": True,
    }
    # then the list shows both, the second as default
    listed = client.get(base(org))
    assert listed.status_code == 200
    assert sorted(
        (c["id"], c["last4"], c["exp_month"], c["exp_year"], c["default"]) for c in listed.json()["data"]
    ) == sorted([(first_pm, "4242", 12, 2034, False), (second_pm, "4444", 12, 2034, True)])
    # when the default card is removed
    removed = client.delete(f"{base(org)}/{second_pm}")
    assert removed.status_code == 204
    assert [c["id"] for c in client.get(base(org)).json()["data"]] == [first_pm]
    customer = StripeCustomer.objects.get(organization=org)
    assert (customer.default_payment_method_id, customer.card_last4) == ("", "")
    # and removing it again finds nothing
    assert client.delete(f"{base(org)}/{second_pm}").status_code == 404


def test_a_card_declined_at_attach_is_a_402(localstripe, key_client_for):
    org, _ = org_with_owner()
    pm = localstripe.payment_method_create(CARD_DECLINED_ON_ATTACH)
    client = key_client_for(org)
    assert post(client, f"{base(org)}/{pm}/default", key=None).status_code == 400
    response = post(client, f"{base(org)}/{pm}/default")
    assert response.status_code == 402
    assert response.json()["error"]["message"] == "Your card was declined."
    assert StripeCustomer.objects.get(organization=org).default_payment_method_id == ""


def test_no_organization_without_a_card_lists_nothing(localstripe, key_client_for):
    org, _ = org_with_owner()
    assert key_client_for(org).get(base(org)).json() == {"data": []}


def test_another_organizations_cards_look_absent(localstripe, key_client_for):
    org_a, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    org_b, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    pm_b = org_b.stripe_customer.default_payment_method_id
    client_a = key_client_for(org_a)
    # org A's key on org B's paths: 404 everywhere, nothing changes
    responses = [
        client_a.get(base(org_b)),
        post(client_a, f"{base(org_b)}/setup"),
        post(client_a, f"{base(org_b)}/{pm_b}/default"),
        client_a.delete(f"{base(org_b)}/{pm_b}"),
    ]
    assert [(r.status_code, r.json()["error"]["code"]) for r in responses] == [(404, "organization_not_found")] * 4
    # org B's card through org A's own path: not on file
    stolen = post(client_a, f"{base(org_a)}/{pm_b}/default", key="k-2")
    assert (stolen.status_code, stolen.json()["error"]["code"]) == (404, "card_not_found")
    assert client_a.delete(f"{base(org_a)}/{pm_b}").status_code == 404
    assert StripeCustomer.objects.get(organization=org_b).default_payment_method_id == pm_b


def test_unauthenticated_is_refused(localstripe, client):
    org, _ = org_with_owner()
    assert client.get(base(org)).status_code in (401, 403)
