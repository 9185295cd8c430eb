"""Who may call what: Bearer authentication, scopes, customer keys bound to one organization, keys/verify.

Invariant 6 (ARCHITECTURE.md): no organization can read or change another's data through any endpoint.
A customer API key of organization A that names organization B gets 404 organization_not_found (B looks
absent, whether it exists or not), and nothing of B changes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from rest_framework.test import APIClient

from accounts.models import Organization, Scope, ServiceToken
from accounts.services import api_key_create, api_key_revoke, service_token_create
from billing.models import CreditAccount, CreditLot, LedgerEntry
from billing.services import credits_grant
from core.models import IdempotencyRecord
from plans.models import Subscription
from tests.factories import AllowanceFactory, PlanFactory, make_org
from usage.models import AllowanceWindow, Reservation, UsageEvent
from usage.services import UsageInput, reservation_create

NOW = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _plain_http(settings):
    # Without DEBUG the settings redirect plain HTTP to HTTPS; the test client speaks plain HTTP.
    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield NOW


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def send(client: APIClient, method: str, url: str, body: Any = None):
    return getattr(client, method)(url, body, format="json", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex)


@dataclass
class Pair:
    """Two organizations on one plan, each with credits, a used window and a held reservation."""

    a: Organization
    b: Organization
    meter_key: str
    reservation_b: Reservation

    def snapshot(self, org: Organization) -> dict[str, Any]:
        return {
            "events": list(UsageEvent.objects.filter(organization=org).values_list("id", flat=True)),
            "ledger": list(LedgerEntry.objects.filter(organization=org).values_list("id", flat=True)),
            "lots": list(CreditLot.objects.filter(organization=org).values_list("id", "remaining", "priority")),
            "windows": list(AllowanceWindow.objects.filter(organization=org).values_list("id", "used")),
            "reservations": list(Reservation.objects.filter(organization=org).values_list("id", "status")),
            "account": list(CreditAccount.objects.filter(organization=org).values_list("balance", "monthly_spend_cap")),
            "subscription": list(Subscription.objects.filter(organization=org).values_list("plan_id", "anchor")),
        }


@pytest.fixture
def pair(db, frozen) -> Pair:
    allowance = AllowanceFactory(limit=Decimal("10"))
    PlanFactory(key="other")
    orgs = [make_org(plan=allowance.plan) for _ in range(2)]
    for org in orgs:
        credits_grant(organization_id=org.pk, credits=Decimal("100"), now=NOW)
    held = reservation_create(
        item=UsageInput(
            organization_id=orgs[1].pk, meter=allowance.meter.key, quantity=Decimal("2"), idempotency_key="b-hold"
        ),
        ttl_seconds=None,
        now=NOW,
    )
    assert held.status == 201
    return Pair(
        a=orgs[0], b=orgs[1], meter_key=allowance.meter.key, reservation_b=Reservation.objects.get(pk=held.body["id"])
    )


# --- authentication ---------------------------------------------------------------------------------

PROTECTED = [
    ("post", "/api/v1/usage"),
    ("post", "/api/v1/usage/batch"),
    ("post", "/api/v1/authorize"),
    ("post", "/api/v1/reservations"),
    ("post", "/api/v1/reservations/1/commit"),
    ("post", "/api/v1/reservations/1/release"),
    ("post", "/api/v1/organizations"),
    ("get", "/api/v1/organizations/1/entitlements"),
    ("get", "/api/v1/organizations/1/ledger"),
    ("post", "/api/v1/organizations/1/grants"),
    ("put", "/api/v1/organizations/1/subscription"),
    ("put", "/api/v1/organizations/1/spend-cap"),
    ("post", "/api/v1/keys/verify"),
]


@pytest.mark.parametrize(("method", "url"), PROTECTED)
def test_no_authorization_header_is_401_with_the_envelope(db, method, url):
    response = send(APIClient(), method, url, {})

    assert response.status_code == 401
    assert response.json() == {
        "error": {"code": "unauthenticated", "message": "Authentication credentials were not provided."}
    }
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Token abc", "Send `Authorization: Bearer <token>`."),
        ("Basic dXNlcjpwYXNz", "Send `Authorization: Bearer <token>`."),
        ("Bearer", "Send `Authorization: Bearer <token>`."),
        ("Bearer a b", "Send `Authorization: Bearer <token>`."),
        ("Bearer fck_not-a-real-key", "This token is unknown or revoked."),
        ("Bearer fcs_not-a-real-token", "This token is unknown or revoked."),
    ],
)
def test_bad_or_unknown_credentials_are_401(db, header, message):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/v1/organizations/1/entitlements")

    assert response.status_code == 401
    assert response.json() == {"error": {"code": "unauthenticated", "message": message}}


def test_revoked_customer_key_is_401(pair):
    key, secret = api_key_create(organization=pair.a, name="old")
    api_key_revoke(api_key=key, now=NOW)

    response = bearer(secret).get(f"/api/v1/organizations/{pair.a.pk}/entitlements")

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This token is unknown or revoked."


def test_revoked_service_token_is_401(pair):
    token, secret = service_token_create(name="old", scope=Scope.ADMIN)
    ServiceToken.objects.filter(pk=token.pk).update(revoked_at=NOW)

    response = bearer(secret).get(f"/api/v1/organizations/{pair.a.pk}/entitlements")

    assert response.status_code == 401


def test_a_key_revoked_after_use_stops_working_once_the_cache_expires(pair, settings):
    settings.AUTH_CACHE_SECONDS = 0
    key, secret = api_key_create(organization=pair.a, name="k")
    client = bearer(secret)
    assert client.get(f"/api/v1/organizations/{pair.a.pk}/entitlements").status_code == 200

    api_key_revoke(api_key=key, now=NOW)

    assert client.get(f"/api/v1/organizations/{pair.a.pk}/entitlements").status_code == 401


def test_customer_key_works_for_its_own_organization_everywhere(pair, key_client_for):
    client = key_client_for(pair.a)
    usage = {"organization": pair.a.pk, "meter": pair.meter_key, "quantity": "1"}

    statuses = {
        "usage": send(client, "post", "/api/v1/usage", usage).status_code,
        "batch": client.post(
            "/api/v1/usage/batch", {"events": [{**usage, "idempotency_key": "k1"}]}, format="json"
        ).json()["results"][0]["status"],
        "authorize": send(client, "post", "/api/v1/authorize", usage).status_code,
        "entitlements": client.get(f"/api/v1/organizations/{pair.a.pk}/entitlements").status_code,
        "ledger": client.get(f"/api/v1/organizations/{pair.a.pk}/ledger").status_code,
    }
    reservation = send(client, "post", "/api/v1/reservations", usage)
    statuses["reserve"] = reservation.status_code
    rid = reservation.json()["id"]
    statuses["commit"] = send(
        client, "post", f"/api/v1/reservations/{rid}/commit", {"organization": pair.a.pk, "quantity": "1"}
    ).status_code
    second = send(client, "post", "/api/v1/reservations", usage).json()["id"]
    statuses["release"] = send(
        client, "post", f"/api/v1/reservations/{second}/release", {"organization": pair.a.pk}
    ).status_code

    assert statuses == {
        "usage": 201,
        "batch": 201,
        "authorize": 200,
        "entitlements": 200,
        "ledger": 200,
        "reserve": 201,
        "commit": 200,
        "release": 200,
    }


# --- scopes: admin calls ----------------------------------------------------------------------------

ADMIN_CALLS: list[tuple[str, str, Callable[[Pair], str], dict[str, Any]]] = [
    ("provision", "post", lambda p: "/api/v1/organizations", {"name": "X", "owner_email": "x@example.com"}),
    ("subscription", "put", lambda p: f"/api/v1/organizations/{p.a.pk}/subscription", {"plan": "other"}),
    ("grants", "post", lambda p: f"/api/v1/organizations/{p.a.pk}/grants", {"credits": "5", "reason": "r"}),
    ("spend-cap", "put", lambda p: f"/api/v1/organizations/{p.a.pk}/spend-cap", {"monthly_spend_cap": "1"}),
]


@pytest.mark.parametrize("who", ["usage-token", "customer-key-of-the-org"])
@pytest.mark.parametrize(("name", "method", "url", "body"), ADMIN_CALLS, ids=[c[0] for c in ADMIN_CALLS])
def test_admin_calls_refuse_usage_tokens_and_customer_keys(
    pair, service_client, key_client_for, who, name, method, url, body
):
    client = service_client if who == "usage-token" else key_client_for(pair.a)
    before = pair.snapshot(pair.a)
    orgs_before = Organization.objects.count()

    response = send(client, method, url(pair), body)

    assert response.status_code == 403
    assert response.json() == {
        "error": {"code": "permission_denied", "message": "This call needs a service token with the admin scope."}
    }
    assert pair.snapshot(pair.a) == before
    assert Organization.objects.count() == orgs_before
    assert IdempotencyRecord.objects.count() == 0


ADMIN_STATUS = {"provision": 201, "subscription": 200, "grants": 201, "spend-cap": 200}


@pytest.mark.parametrize(("name", "method", "url", "body"), ADMIN_CALLS, ids=[c[0] for c in ADMIN_CALLS])
def test_admin_calls_accept_an_admin_token(pair, admin_client, name, method, url, body):
    response = send(admin_client, method, url(pair), body)

    assert response.status_code == ADMIN_STATUS[name]


# --- cross-organization access -------------------------------------------------------------------------


def cross_org_calls(p: Pair) -> list[tuple[str, str, str, Any]]:
    """(name, method, url, body): every org-scoped call, made with A's key but naming organization B."""
    b, rid = p.b.pk, p.reservation_b.pk
    usage = {"organization": b, "meter": p.meter_key, "quantity": "1"}
    return [
        ("usage", "post", "/api/v1/usage", usage),
        ("authorize", "post", "/api/v1/authorize", usage),
        ("reservation-create", "post", "/api/v1/reservations", usage),
        ("reservation-commit", "post", f"/api/v1/reservations/{rid}/commit", {"organization": b, "quantity": "1"}),
        ("reservation-release", "post", f"/api/v1/reservations/{rid}/release", {"organization": b}),
        ("entitlements", "get", f"/api/v1/organizations/{b}/entitlements", None),
        ("ledger", "get", f"/api/v1/organizations/{b}/ledger", None),
    ]


CROSS_ORG_NAMES = [
    "usage",
    "authorize",
    "reservation-create",
    "reservation-commit",
    "reservation-release",
    "entitlements",
    "ledger",
]


@pytest.mark.parametrize("name", CROSS_ORG_NAMES)
def test_customer_key_of_a_naming_b_is_404_and_b_is_untouched(pair, key_client_for, name):
    call = {c[0]: c for c in cross_org_calls(pair)}[name]
    _, method, url, body = call
    before = pair.snapshot(pair.b)

    response = send(key_client_for(pair.a), method, url, body)

    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "organization_not_found", "message": f"There is no organization {pair.b.pk}."}
    }
    assert pair.snapshot(pair.b) == before


@pytest.mark.parametrize("name", CROSS_ORG_NAMES)
def test_customer_key_naming_a_missing_organization_looks_the_same(pair, key_client_for, name):
    # B's existence must not leak: an id nobody has answers exactly as B does
    missing = max(pair.a.pk, pair.b.pk) + 1000
    _, method, url, body = {c[0]: c for c in cross_org_calls(pair)}[name]
    url = url.replace(f"/organizations/{pair.b.pk}/", f"/organizations/{missing}/")
    if isinstance(body, dict):
        body = {**body, "organization": missing}

    response = send(key_client_for(pair.a), method, url, body)

    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "organization_not_found", "message": f"There is no organization {missing}."}
    }


@pytest.mark.parametrize("action", ["commit", "release"])
def test_reservation_of_b_named_with_organization_a_is_404(pair, key_client_for, service_client, action):
    # A's key names its own organization but B's reservation id: the reservation is not found
    before = pair.snapshot(pair.b)
    body = {"organization": pair.a.pk, "quantity": "1"}

    for client in (key_client_for(pair.a), service_client):
        response = send(client, "post", f"/api/v1/reservations/{pair.reservation_b.pk}/{action}", body)

        assert response.status_code == 404
        assert response.json() == {
            "error": {"code": "reservation_not_found", "message": f"There is no reservation {pair.reservation_b.pk}."}
        }
    assert pair.snapshot(pair.b) == before
    assert Reservation.objects.get(pk=pair.reservation_b.pk).status == "held"


def test_batch_items_naming_b_are_refused_one_by_one(pair, key_client_for):
    before = pair.snapshot(pair.b)
    events = [
        {"organization": pair.a.pk, "meter": pair.meter_key, "quantity": "1", "idempotency_key": "x1"},
        {"organization": pair.b.pk, "meter": pair.meter_key, "quantity": "1", "idempotency_key": "x2"},
        {"organization": pair.a.pk, "meter": pair.meter_key, "quantity": "1", "idempotency_key": "x3"},
    ]

    response = key_client_for(pair.a).post("/api/v1/usage/batch", {"events": events}, format="json")

    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 404, 201]
    assert results[1]["body"] == {
        "error": {"code": "organization_not_found", "message": f"There is no organization {pair.b.pk}."}
    }
    assert pair.snapshot(pair.b) == before
    assert UsageEvent.objects.filter(organization=pair.a).count() == 2


def test_same_idempotency_key_in_two_organizations_are_two_operations(pair, key_client_for):
    body_a = {"organization": pair.a.pk, "meter": pair.meter_key, "quantity": "1"}
    body_b = {**body_a, "organization": pair.b.pk}

    first = key_client_for(pair.a).post("/api/v1/usage", body_a, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    second = key_client_for(pair.b).post("/api/v1/usage", body_b, format="json", HTTP_IDEMPOTENCY_KEY="shared")

    assert (first.status_code, second.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in second.headers
    assert second.json()["organization"] == pair.b.pk


# --- POST /api/v1/keys/verify --------------------------------------------------------------------------


def test_verify_a_valid_key_returns_its_organization_and_plan(pair, service_client):
    key, secret = api_key_create(organization=pair.a, name="ci")

    response = service_client.post("/api/v1/keys/verify", {"key": secret}, format="json")

    assert response.status_code == 200
    assert response.json() == {
        "organization": pair.a.pk,
        "organization_name": pair.a.name,
        "key": {"id": key.pk, "name": "ci", "prefix": secret[:10]},
        "plan": Subscription.objects.get(organization=pair.a).plan.key,
    }


def test_verify_works_with_an_admin_token_too(pair, admin_client):
    _, secret = api_key_create(organization=pair.a, name="ci")

    assert admin_client.post("/api/v1/keys/verify", {"key": secret}, format="json").status_code == 200


@pytest.mark.parametrize("which", ["revoked", "unknown", "service-token"])
def test_verify_revoked_or_unknown_key_is_404(pair, service_client, which):
    if which == "revoked":
        key, secret = api_key_create(organization=pair.a, name="old")
        api_key_revoke(api_key=key, now=NOW)
    elif which == "unknown":
        secret = "fck_" + "x" * 43
    else:  # a service token is not a customer key
        _, secret = service_token_create(name="t", scope=Scope.USAGE)

    response = service_client.post("/api/v1/keys/verify", {"key": secret}, format="json")

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "key_not_found", "message": "This key is unknown or revoked."}}


def test_verify_refuses_customer_keys(pair, key_client_for):
    _, secret = api_key_create(organization=pair.a, name="ci")

    response = key_client_for(pair.a).post("/api/v1/keys/verify", {"key": secret}, format="json")

    assert response.status_code == 403
    assert response.json() == {"error": {"code": "permission_denied", "message": "This call needs a service token."}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "key: this field is required"),
        ({"key": 5}, "key: must be a string"),
        ({"key": "k" * 201}, "key: must be at most 200 characters"),
        ({"key": "a\x00"}, "key: must not contain NUL characters"),
        (["k"], "The body must be a JSON object."),
    ],
)
def test_verify_bad_input_is_400(db, service_client, body, message):
    response = service_client.post("/api/v1/keys/verify", body, format="json")

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": message,
        **({"field": "key"} if isinstance(body, dict) else {}),
    }
