"""The API's error contract, across every endpoint: {"error": {"code", "message"}} with a 4xx, never HTML,
never a 500 for client input; the Idempotency-Key header on every mutating call; the OpenAPI schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.test import RequestFactory
from rest_framework.test import APIClient

from billing.models import CreditLot, LedgerEntry
from billing.services import credits_grant
from core.api import not_found_handler, server_error_handler
from core.models import IdempotencyRecord
from core.parsing import MAX_JSON_DEPTH
from tests.factories import AllowanceFactory, make_org
from usage.models import Reservation, UsageEvent
from usage.services import UsageInput, reservation_create

NOW = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _plain_http(settings):
    # Without DEBUG the settings redirect plain HTTP to HTTPS; the test client speaks plain HTTP.
    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture
def org_and_meter(db):
    with time_machine.travel(NOW, tick=False):
        allowance = AllowanceFactory(limit=Decimal("10"))
        org = make_org(plan=allowance.plan)
        credits_grant(organization_id=org.pk, credits=Decimal("100"), now=NOW)
        held = reservation_create(
            item=UsageInput(
                organization_id=org.pk, meter=allowance.meter.key, quantity=Decimal("1"), idempotency_key="h"
            ),
            ttl_seconds=None,
            now=NOW,
        )
        yield org, allowance.meter.key, held.body["id"]


def mutating_calls(org_id: int, meter: str, reservation_id: int) -> list[tuple[str, str, str, dict]]:
    usage = {"organization": org_id, "meter": meter, "quantity": "1"}
    return [
        ("usage", "post", "/api/v1/usage", usage),
        ("reservation-create", "post", "/api/v1/reservations", usage),
        (
            "reservation-commit",
            "post",
            f"/api/v1/reservations/{reservation_id}/commit",
            {"organization": org_id, "quantity": "1"},
        ),
        ("reservation-release", "post", f"/api/v1/reservations/{reservation_id}/release", {"organization": org_id}),
        ("organization-create", "post", "/api/v1/organizations", {"name": "N", "owner_email": "n@example.com"}),
        ("subscription", "put", f"/api/v1/organizations/{org_id}/subscription", {"plan": "x"}),
        ("grants", "post", f"/api/v1/organizations/{org_id}/grants", {"credits": "1", "reason": "r"}),
        ("spend-cap", "put", f"/api/v1/organizations/{org_id}/spend-cap", {"monthly_spend_cap": "1"}),
    ]


MUTATING = [
    "usage",
    "reservation-create",
    "reservation-commit",
    "reservation-release",
    "organization-create",
    "subscription",
    "grants",
    "spend-cap",
]


def counts(org, reservation_id: int) -> tuple:
    return (
        UsageEvent.objects.filter(organization=org).count(),
        LedgerEntry.objects.filter(organization=org).count(),
        CreditLot.objects.filter(organization=org).count(),
        IdempotencyRecord.objects.count(),
        Reservation.objects.filter(organization=org).count(),
        Reservation.objects.get(pk=reservation_id).status,
    )


# --- Idempotency-Key on every mutating call ----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "idempotency_key_missing"),
        ("", "idempotency_key_missing"),
        ("   ", "idempotency_key_missing"),
        ("k" * 256, "idempotency_key_invalid"),
        ("a\x00b", "idempotency_key_invalid"),
    ],
    ids=["absent", "empty", "blank", "too-long", "nul"],
)
@pytest.mark.parametrize("name", MUTATING)
def test_every_mutating_call_needs_a_usable_idempotency_key(org_and_meter, admin_client, name, header, code):
    org, meter, rid = org_and_meter
    _, method, url, body = {c[0]: c for c in mutating_calls(org.pk, meter, rid)}[name]
    before = counts(org, rid)
    extra = {} if header is None else {"HTTP_IDEMPOTENCY_KEY": header}

    response = getattr(admin_client, method)(url, body, format="json", **extra)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert set(response.json()["error"]) == {"code", "message"}
    assert counts(org, rid) == before


def test_an_idempotency_key_of_255_characters_is_accepted(org_and_meter, service_client):
    org, meter, _ = org_and_meter

    response = service_client.post(
        "/api/v1/usage",
        {"organization": org.pk, "meter": meter, "quantity": "1"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k" * 255,
    )

    assert response.status_code == 201


# --- malformed bodies on every POST/PUT ------------------------------------------------------------

BODY_CALLS = [
    ("post", "/api/v1/usage"),
    ("post", "/api/v1/usage/batch"),
    ("post", "/api/v1/authorize"),
    ("post", "/api/v1/reservations"),
    ("post", "/api/v1/reservations/{rid}/commit"),
    ("post", "/api/v1/reservations/{rid}/release"),
    ("post", "/api/v1/organizations"),
    ("put", "/api/v1/organizations/{org}/subscription"),
    ("post", "/api/v1/organizations/{org}/grants"),
    ("put", "/api/v1/organizations/{org}/spend-cap"),
    ("post", "/api/v1/keys/verify"),
]


@pytest.mark.parametrize(("method", "url"), BODY_CALLS)
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ('{"organization": ', "malformed_json"),
        ('{"quantity": NaN}', "malformed_json"),
        ("[1, 2, 3]", "validation_error"),
        ('"a string"', "validation_error"),
        ("null", "validation_error"),
        ("17", "validation_error"),
    ],
    ids=["truncated", "nan-literal", "array", "string", "null", "number"],
)
def test_malformed_or_non_object_bodies_are_400_on_every_call(org_and_meter, admin_client, method, url, raw, code):
    org, _, rid = org_and_meter
    before = counts(org, rid)

    response = getattr(admin_client, method)(
        url.format(org=org.pk, rid=rid), raw, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k"
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert counts(org, rid) == before


def nested(depth: int) -> str:
    """A JSON object nested `depth` levels: {"a": {"a": ... {} ...}}."""
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


TOO_DEEP = {
    "error": {
        "code": "malformed_json",
        "message": f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels).",
    }
}


@pytest.mark.parametrize(("method", "url"), BODY_CALLS)
@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,  # Python's decoder raised RecursionError: a 500
        '{"metadata": ' + nested(400) + "}",  # decoded, then the NUL check recursed past the limit: a 500
        "[" + nested(MAX_JSON_DEPTH) + "]",
    ],
    ids=["decoder-limit", "walk-limit", "one-past-the-bound"],
)
def test_bodies_nested_too_deeply_are_400_on_every_call(org_and_meter, admin_client, method, url, raw):
    org, _, rid = org_and_meter
    before = counts(org, rid)

    response = getattr(admin_client, method)(
        url.format(org=org.pk, rid=rid), raw, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k"
    )

    assert response.status_code == 400
    assert response.json() == TOO_DEEP
    assert counts(org, rid) == before


def test_metadata_nested_up_to_the_bound_is_recorded(org_and_meter, service_client):
    org, meter, _ = org_and_meter
    # The body is level 1 and metadata level 2, so metadata may nest MAX_JSON_DEPTH - 1 levels.
    raw = json.dumps({"organization": org.pk, "meter": meter, "quantity": "1", "metadata": "M"})
    raw = raw.replace('"M"', nested(MAX_JSON_DEPTH - 1))

    response = service_client.post("/api/v1/usage", raw, content_type="application/json", HTTP_IDEMPOTENCY_KEY="m")

    assert response.status_code == 201
    assert UsageEvent.objects.get(pk=response.json()["id"]).metadata == json.loads(nested(MAX_JSON_DEPTH - 1))


def test_batch_events_nested_too_deeply_refuse_the_whole_batch(org_and_meter, service_client):
    org, meter, _ = org_and_meter
    event = {"idempotency_key": "e1", "organization": org.pk, "meter": meter, "quantity": "1"}
    # events (2) > an event (3) > metadata (4 and down): nested MAX_JSON_DEPTH - 2 levels, it ends one past the bound
    raw = json.dumps({"events": [event, {**event, "idempotency_key": "e2", "metadata": "M"}]})
    raw = raw.replace('"M"', nested(MAX_JSON_DEPTH - 2))
    before = UsageEvent.objects.filter(organization=org).count()

    response = service_client.post("/api/v1/usage/batch", raw, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == TOO_DEEP
    assert UsageEvent.objects.filter(organization=org).count() == before


@pytest.mark.parametrize(("method", "url"), BODY_CALLS)
def test_form_bodies_are_415_on_every_call(org_and_meter, admin_client, method, url):
    org, _, rid = org_and_meter

    response = getattr(admin_client, method)(
        url.format(org=org.pk, rid=rid),
        "a=b",
        content_type="application/x-www-form-urlencoded",
        HTTP_IDEMPOTENCY_KEY="k",
    )

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


# --- routing errors: JSON under /api/, HTML elsewhere ---------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/organizations/abc/ledger", "/api/v2/usage", "/api/nope"])
@pytest.mark.parametrize("authenticated", [True, False])
def test_unknown_api_url_is_a_json_404(db, service_client, path, authenticated):
    client = service_client if authenticated else APIClient()

    response = client.get(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": {"code": "not_found", "message": f"There is no endpoint at {path}."}}


def test_unknown_url_outside_the_api_keeps_the_html_page(db):
    response = APIClient().get("/no-such-page/")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_wrong_method_is_a_json_405(db, service_client):
    response = service_client.get("/api/v1/usage")

    assert response.status_code == 405
    assert response.json() == {"error": {"code": "method_not_allowed", "message": 'Method "GET" not allowed.'}}


def test_an_unexpected_error_under_the_api_is_a_json_500_without_details(org_and_meter, monkeypatch):
    org, meter, _ = org_and_meter

    def boom(**kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("usage.services.usage_record", boom)
    from accounts.services import service_token_create

    _, secret = service_token_create(name="t", scope="usage")
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")

    response = client.post(
        "/api/v1/usage",
        {"organization": org.pk, "meter": meter, "quantity": "1"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": {"code": "server_error", "message": "Something went wrong on our side."}}
    assert b"secret internals" not in response.content


def test_error_handlers_keep_html_outside_the_api(db):
    request = RequestFactory().get("/dashboard/")

    not_found = not_found_handler(request, Exception("x"))
    server_error = server_error_handler(request)

    assert (not_found.status_code, server_error.status_code) == (404, 500)
    assert not_found["Content-Type"].startswith("text/html")
    assert server_error["Content-Type"].startswith("text/html")


# --- OpenAPI schema and docs ------------------------------------------------------------------------------

API_PATHS = {
    "/api/v1/usage": {"post"},
    "/api/v1/usage/batch": {"post"},
    "/api/v1/authorize": {"post"},
    "/api/v1/reservations": {"post"},
    "/api/v1/reservations/{reservation_id}/commit": {"post"},
    "/api/v1/reservations/{reservation_id}/release": {"post"},
    "/api/v1/organizations": {"post"},
    "/api/v1/organizations/{organization_id}/entitlements": {"get"},
    "/api/v1/organizations/{organization_id}/ledger": {"get"},
    "/api/v1/organizations/{organization_id}/grants": {"post"},
    "/api/v1/organizations/{organization_id}/subscription": {"put"},
    "/api/v1/organizations/{organization_id}/spend-cap": {"put"},
    "/api/v1/organizations/{organization_id}/purchases": {"get", "post"},
    "/api/v1/organizations/{organization_id}/cards": {"get"},
    "/api/v1/organizations/{organization_id}/cards/setup": {"post"},
    "/api/v1/organizations/{organization_id}/cards/{payment_method_id}": {"delete"},
    "/api/v1/organizations/{organization_id}/cards/{payment_method_id}/default": {"post"},
    "/api/v1/keys/verify": {"post"},
}


@pytest.fixture
def schema(db) -> dict:
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


def test_schema_is_openapi_3_and_lists_every_endpoint(schema):
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Flexible usage credits API"
    assert {path: set(ops) - {"parameters"} for path, ops in schema["paths"].items()} == API_PATHS


def test_schema_documents_bearer_auth_and_the_idempotency_header(schema):
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    mutating = [
        ("/api/v1/usage", "post"),
        ("/api/v1/reservations", "post"),
        ("/api/v1/reservations/{reservation_id}/commit", "post"),
        ("/api/v1/reservations/{reservation_id}/release", "post"),
        ("/api/v1/organizations", "post"),
        ("/api/v1/organizations/{organization_id}/grants", "post"),
        ("/api/v1/organizations/{organization_id}/subscription", "put"),
        ("/api/v1/organizations/{organization_id}/spend-cap", "put"),
        ("/api/v1/organizations/{organization_id}/purchases", "post"),
        ("/api/v1/organizations/{organization_id}/cards/setup", "post"),
        ("/api/v1/organizations/{organization_id}/cards/{payment_method_id}/default", "post"),
    ]
    for path, method in mutating:
        operation = schema["paths"][path][method]
        headers = [(p["name"], p["required"]) for p in operation.get("parameters", []) if p["in"] == "header"]
        assert headers == [("Idempotency-Key", True)], path
        assert {"bearerAuth": []} in operation["security"], path


def test_schema_yaml_is_served_without_credentials(db):
    response = APIClient().get("/api/schema/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert response.content.startswith(b"openapi: 3.")


def test_docs_page_is_served(db):
    response = APIClient().get("/api/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"/api/schema/" in response.content
