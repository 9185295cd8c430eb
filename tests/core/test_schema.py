"""Responses match the OpenAPI schema served at /api/schema/ (what schemathesis checks against).

Each case here is a response that once broke its documented schema: a field documented as always
present and non-null that can be null, or a shape documented too loosely to generate against.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # a dependency of drf-spectacular; no stubs installed
import pytest
import time_machine
from rest_framework.test import APIClient

from accounts.services import api_key_create, organization_create
from billing.services import credits_grant
from tests.factories import AllowanceFactory, make_org

NOW = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def schema(db) -> dict[str, Any]:
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema's `"type": [..., "null"]`."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def assert_documented(schema: dict[str, Any], path: str, method: str, response: Any) -> None:
    documented = schema["paths"][path][method]["responses"][str(response.status_code)]
    body_schema = documented["content"]["application/json"]["schema"]
    validator = jsonschema.Draft7Validator(
        {**_json_schema(body_schema), "components": _json_schema(schema["components"])}
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(response.json())]
    assert errors == []


@pytest.fixture
def org(db):
    with time_machine.travel(NOW, tick=False):
        allowance = AllowanceFactory(limit=Decimal("10"))
        org = make_org(plan=allowance.plan)
        credits_grant(organization_id=org.pk, credits=Decimal("100"), now=NOW)
        yield org


def test_the_last_ledger_page_has_next_null(schema, org, service_client):
    response = service_client.get(f"/api/v1/organizations/{org.pk}/ledger")

    assert response.status_code == 200
    assert response.json()["next"] is None
    assert len(response.json()["data"]) == 1
    assert_documented(schema, "/api/v1/organizations/{organization_id}/ledger", "get", response)


def test_a_ledger_page_with_more_after_it_has_an_integer_next(schema, org, service_client):
    credits_grant(organization_id=org.pk, credits=Decimal("5"), now=NOW)

    response = service_client.get(f"/api/v1/organizations/{org.pk}/ledger", {"limit": 1})

    assert response.status_code == 200
    assert response.json()["next"] == response.json()["data"][0]["id"]
    assert_documented(schema, "/api/v1/organizations/{organization_id}/ledger", "get", response)


def test_no_receipts_is_an_empty_page_with_next_null(schema, org, service_client):
    response = service_client.get(f"/api/v1/organizations/{org.pk}/purchases")

    assert response.status_code == 200
    assert response.json() == {"data": [], "next": None}
    assert_documented(schema, "/api/v1/organizations/{organization_id}/purchases", "get", response)


def test_a_key_of_an_organization_without_a_plan_verifies_with_plan_null(schema, db, service_client):
    bare = organization_create(name="No plan yet")
    key, secret = api_key_create(organization=bare, name="ci")

    response = service_client.post("/api/v1/keys/verify", {"key": secret}, format="json")

    assert response.status_code == 200
    assert response.json() == {
        "organization": bare.pk,
        "organization_name": "No plan yet",
        "key": {"id": key.pk, "name": "ci", "prefix": secret[:10]},
        "plan": None,
    }
    assert_documented(schema, "/api/v1/keys/verify", "post", response)


def test_batch_events_and_results_are_documented_with_their_fields(schema, org, service_client):
    event_schema = schema["components"]["schemas"]["UsageBatchEvent"]
    assert event_schema["required"] == ["idempotency_key", "meter", "organization", "quantity"]
    request = schema["components"]["schemas"]["UsageBatchRequest"]["properties"]["events"]
    assert (request["items"], request["minItems"], request["maxItems"]) == (
        {"$ref": "#/components/schemas/UsageBatchEvent"},
        1,
        1000,
    )
    meter = org.subscription.plan.allowances.get().meter.key
    events = [
        {"idempotency_key": "b1", "organization": org.pk, "meter": meter, "quantity": "1"},
        {"idempotency_key": "b2", "organization": org.pk, "meter": meter, "quantity": "x"},
    ]

    with time_machine.travel(NOW, tick=False):
        response = service_client.post("/api/v1/usage/batch", {"events": events}, format="json")

    assert response.status_code == 200
    assert [(r["index"], r["status"]) for r in response.json()["results"]] == [(0, 201), (1, 400)]
    assert_documented(schema, "/api/v1/usage/batch", "post", response)
