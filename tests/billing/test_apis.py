"""Billing's HTTP API: the ledger, and the admin calls (provisioning, plan change, grants, spend cap).

Time is frozen at NOW; organizations are anchored at T0 (Jan 15, 12:00 UTC).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from accounts.models import Membership, Organization, Role, User
from billing.models import CreditAccount, CreditLot, LedgerEntry
from billing.services import credits_grant
from core.models import IdempotencyRecord
from plans.models import Subscription
from tests.factories import AllowanceFactory, PlanFactory, UserFactory, make_org

NOW = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _plain_http(settings):
    # Without DEBUG the settings redirect plain HTTP to HTTPS; the test client speaks plain HTTP.
    settings.SECURE_SSL_REDIRECT = False


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield NOW


@pytest.fixture
def allowance(db, frozen):
    # 10 tasks included per billing period, 5 credits a task beyond
    return AllowanceFactory(limit=Decimal("10"))


@pytest.fixture
def org(allowance):
    return make_org(plan=allowance.plan)


def send(client, method: str, url: str, body: Any, *, key: str | None = "auto"):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": uuid.uuid4().hex if key == "auto" else key}
    return getattr(client, method)(url, body, format="json", **headers)


def use(client, org, meter, quantity: str):
    return send(client, "post", "/api/v1/usage", {"organization": org.pk, "meter": meter.key, "quantity": quantity})


# --- GET /api/v1/organizations/{id}/ledger --------------------------------------------------------


def test_ledger_pages_newest_first(org, allowance, service_client):
    # given a grant and five paid usages: six ledger entries
    credits_grant(organization_id=org.pk, credits=Decimal("100"), now=NOW, reason="welcome")
    use(service_client, org, allowance.meter, "10")  # the allowance: no ledger entry
    for _ in range(5):
        use(service_client, org, allowance.meter, "1")
    ids = list(LedgerEntry.objects.filter(organization=org).order_by("-id").values_list("id", flat=True))
    assert len(ids) == 6
    url = f"/api/v1/organizations/{org.pk}/ledger"

    # when read two at a time
    page1 = service_client.get(url, {"limit": 2}).json()
    page2 = service_client.get(url, {"limit": 2, "before": page1["next"]}).json()
    page3 = service_client.get(url, {"limit": 2, "before": page2["next"]}).json()

    # then the pages cover every entry once, newest first, and the last says there is no next
    assert [row["id"] for row in page1["data"]] == ids[0:2]
    assert [row["id"] for row in page2["data"]] == ids[2:4]
    assert [row["id"] for row in page3["data"]] == ids[4:6]
    assert (page1["next"], page2["next"], page3["next"]) == (ids[1], ids[3], None)
    assert [row["balance_after"] for row in page1["data"] + page2["data"] + page3["data"]] == [
        "75",
        "80",
        "85",
        "90",
        "95",
        "100",
    ]
    everything = service_client.get(url).json()
    assert [row["id"] for row in everything["data"]] == ids
    assert everything["next"] is None


def test_ledger_entry_shape(org, allowance, service_client):
    lot = credits_grant(organization_id=org.pk, credits=Decimal("12.5"), now=NOW, reason="welcome")
    use(service_client, org, allowance.meter, "11")
    event_id = org.usage_events.get().pk

    rows = service_client.get(f"/api/v1/organizations/{org.pk}/ledger").json()["data"]

    consume, grant = rows
    assert grant == {
        "id": grant["id"],
        "kind": "grant",
        "amount": "12.5",
        "balance_after": "12.5",
        "lot": lot.pk,
        "lot_category": "promotional",
        "reference": f"grant:{lot.pk}",
        "reason": "welcome",
        "actor": None,
        "created_at": NOW.isoformat(),
    }
    assert (consume["kind"], consume["amount"], consume["balance_after"], consume["reference"]) == (
        "consume",
        "-5",
        "7.5",
        f"usage:{event_id}",
    )


def test_ledger_with_the_customer_key_of_its_own_organization(org, key_client_for):
    credits_grant(organization_id=org.pk, credits=Decimal("5"), now=NOW)

    response = key_client_for(org).get(f"/api/v1/organizations/{org.pk}/ledger")

    assert response.status_code == 200
    assert [row["amount"] for row in response.json()["data"]] == ["5"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"limit": "abc"}, "limit: must be an integer"),
        ({"limit": "10000"}, "limit: at most 500"),
        ({"limit": "0"}, "limit: must be at least 1"),
        ({"limit": "-1"}, "limit: must be an integer"),
        ({"limit": "1.5"}, "limit: must be an integer"),
        ({"limit": "²"}, "limit: must be an integer"),
        ({"limit": "9" * 5000}, "limit: is too large"),
        ({"before": "abc"}, "before: must be an integer"),
        ({"before": str(2**70)}, "before: is too large"),
    ],
)
def test_ledger_bad_query_is_400(org, service_client, query, message):
    response = service_client.get(f"/api/v1/organizations/{org.pk}/ledger", query)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert response.json()["error"]["message"] == message


def test_ledger_limit_500_is_allowed(org, service_client):
    response = service_client.get(f"/api/v1/organizations/{org.pk}/ledger", {"limit": "500"})

    assert response.status_code == 200
    assert response.json() == {"data": [], "next": None}


def test_ledger_of_an_unknown_organization_is_404(db, service_client):
    response = service_client.get("/api/v1/organizations/999999999/ledger")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organization_not_found"


# --- POST /api/v1/organizations (provisioning) -----------------------------------------------------


def provision(client, body: dict[str, Any], key: str = "auto"):
    return send(client, "post", "/api/v1/organizations", body, key=key)


def test_provisioning_creates_owner_org_subscription_and_credit_account(allowance, admin_client):
    response = provision(
        admin_client,
        {"name": "Acme", "owner_email": "Boss@Example.com", "plan": allowance.plan.key, "timezone": "Asia/Tokyo"},
        key="acme",
    )

    assert response.status_code == 201
    org = Organization.objects.get(name="Acme")
    assert response.json() == {
        "id": org.pk,
        "name": "Acme",
        "owner_email": "boss@example.com",
        "plan": allowance.plan.key,
        "timezone": "Asia/Tokyo",
        "period_anchor": NOW.isoformat(),
    }
    owner = User.objects.get(email__iexact="boss@example.com")
    assert list(Membership.objects.filter(organization=org).values_list("user_id", "role")) == [(owner.pk, Role.OWNER)]
    subscription = Subscription.objects.get(organization=org)
    assert (subscription.plan_id, subscription.anchor) == (allowance.plan.pk, NOW)
    assert CreditAccount.objects.filter(organization=org).count() == 1
    # the new owner also got a personal organization, with its own subscription and account
    personal = Organization.objects.get(memberships__user=owner, is_personal=True)
    assert Subscription.objects.filter(organization=personal).count() == 1
    assert CreditAccount.objects.filter(organization=personal).count() == 1
    # and the organization works at once
    entitlements = admin_client.get(f"/api/v1/organizations/{org.pk}/entitlements").json()
    assert entitlements["plan"]["key"] == allowance.plan.key
    assert entitlements["credits"]["balance"] == "0"


def test_provisioning_replays_and_refuses_a_reused_key(allowance, admin_client):
    body = {"name": "Acme", "owner_email": "boss@example.com", "plan": allowance.plan.key}
    first = provision(admin_client, body, key="acme")

    replay = provision(admin_client, body, key="acme")
    reused = provision(admin_client, {**body, "name": "Other"}, key="acme")

    assert (replay.status_code, replay.json()) == (201, first.json())
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert Organization.objects.filter(is_personal=False).count() == 1
    assert User.objects.count() == 1


def test_provisioning_for_an_existing_user_adds_no_user(allowance, admin_client):
    user = UserFactory(email="boss@example.com")

    response = provision(
        admin_client, {"name": "Second", "owner_email": "BOSS@example.com", "plan": allowance.plan.key}
    )

    assert response.status_code == 201
    assert User.objects.count() == 1
    org = Organization.objects.get(pk=response.json()["id"])
    assert Membership.objects.get(organization=org).user_id == user.pk


def test_provisioning_without_a_plan_uses_the_default(allowance, admin_client):
    default = PlanFactory(key="free", price_amount=0, is_default=True)

    response = provision(admin_client, {"name": "Acme", "owner_email": "boss@example.com"})

    assert response.status_code == 201
    assert response.json()["plan"] == default.key


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (
            {"name": "Acme", "owner_email": "boss@example.com", "plan": "platinum"},
            404,
            "plan_not_found",
            "There is no plan 'platinum'.",
        ),
        (
            {"name": "Acme", "owner_email": "not-an-email"},
            400,
            "validation_error",
            "owner_email: must be an email address",
        ),
        ({"name": "Acme", "owner_email": 5}, 400, "validation_error", "owner_email: must be a string"),
        ({"name": "Acme"}, 400, "validation_error", "owner_email: this field is required"),
        ({"owner_email": "boss@example.com"}, 400, "validation_error", "name: this field is required"),
        ({"name": "   ", "owner_email": "boss@example.com"}, 400, "invalid_name", "An organization needs a name."),
        (
            {"name": "A\x00", "owner_email": "boss@example.com"},
            400,
            "validation_error",
            "name: must not contain NUL characters",
        ),
        (
            {"name": "x" * 201, "owner_email": "boss@example.com"},
            400,
            "validation_error",
            "name: must be at most 200 characters",
        ),
        (
            {"name": "Acme", "owner_email": "boss@example.com", "timezone": "Mars/Olympus"},
            400,
            "validation_error",
            "timezone: not a known IANA time zone",
        ),
        (
            {"name": "Acme", "owner_email": "boss@example.com", "timezone": "../../etc/passwd"},
            400,
            "validation_error",
            "timezone: not a known IANA time zone",
        ),
        (["Acme"], 400, "validation_error", "The body must be a JSON object."),
    ],
)
def test_provisioning_bad_input(allowance, admin_client, body, status, code, message):
    response = provision(admin_client, body)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"] == message
    assert Organization.objects.count() == 0
    assert User.objects.count() == 0


# --- PUT /api/v1/organizations/{id}/subscription ----------------------------------------------------


def test_subscription_change_moves_to_the_new_plan_and_replays(org, allowance, admin_client):
    pro = PlanFactory(key="pro", price_amount=20000)
    url = f"/api/v1/organizations/{org.pk}/subscription"

    response = send(admin_client, "put", url, {"plan": "pro"}, key="upgrade")

    assert response.status_code == 200
    assert response.json() == {
        "organization": org.pk,
        "plan": "pro",
        "status": "active",
        "period_anchor": NOW.isoformat(),
    }
    subscription = Subscription.objects.get(organization=org)
    assert (subscription.plan_id, subscription.anchor) == (pro.pk, NOW)
    replay = send(admin_client, "put", url, {"plan": "pro"}, key="upgrade")
    assert (replay.status_code, replay.json(), replay.headers["Idempotent-Replayed"]) == (200, response.json(), "true")
    reused = send(admin_client, "put", url, {"plan": allowance.plan.key}, key="upgrade")
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert Subscription.objects.get(organization=org).plan_id == pro.pk


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"plan": "platinum"}, 404, "plan_not_found"),
        ({}, 400, "validation_error"),
        ({"plan": 3}, 400, "validation_error"),
        ("pro", 400, "validation_error"),
    ],
)
def test_subscription_change_bad_input(org, allowance, admin_client, body, status, code):
    response = send(admin_client, "put", f"/api/v1/organizations/{org.pk}/subscription", body)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert Subscription.objects.get(organization=org).plan_id == allowance.plan.pk


def test_subscription_change_of_an_unknown_organization_is_404(allowance, admin_client):
    response = send(admin_client, "put", "/api/v1/organizations/999999999/subscription", {"plan": allowance.plan.key})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organization_not_found"


# --- POST /api/v1/organizations/{id}/grants ----------------------------------------------------------


def grant(client, org, body: dict[str, Any], key: str = "auto"):
    return send(client, "post", f"/api/v1/organizations/{org.pk}/grants", body, key=key)


def test_grant_creates_a_lot_and_a_ledger_entry(org, admin_client):
    body = {
        "credits": "250.5",
        "reason": "Sorry for the outage",
        "expires_at": "2026-03-01T09:00:00+09:00",
        "priority": 5,
        "category": "paid",
    }

    response = grant(admin_client, org, body, key="g1")

    assert response.status_code == 201
    lot = CreditLot.objects.get(organization=org)
    assert response.json() == {
        "id": lot.pk,
        "organization": org.pk,
        "category": "paid",
        "source": "grant",
        "priority": 5,
        "granted": "250.5",
        "remaining": "250.5",
        "effective_at": NOW.isoformat(),
        "expires_at": "2026-03-01T00:00:00+00:00",
        "reason": "Sorry for the outage",
    }
    entry = LedgerEntry.objects.get(organization=org)
    assert (entry.kind, entry.amount, entry.lot_id, entry.reason) == (
        "grant",
        Decimal("250.5"),
        lot.pk,
        "Sorry for the outage",
    )


def test_grant_replay_grants_once(org, admin_client):
    body = {"credits": "10", "reason": "promo"}
    first = grant(admin_client, org, body, key="g1")

    replay = grant(admin_client, org, body, key="g1")
    reused = grant(admin_client, org, {**body, "credits": "11"}, key="g1")

    assert (replay.status_code, replay.json()) == (201, first.json())
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert CreditLot.objects.filter(organization=org).count() == 1
    assert CreditAccount.objects.get(organization=org).balance == Decimal("10")


def test_grant_defaults_promotional_priority_100_no_expiry(org, admin_client):
    response = grant(admin_client, org, {"credits": "1", "reason": "r"})

    assert response.status_code == 201
    body = response.json()
    assert (body["category"], body["priority"], body["expires_at"]) == ("promotional", 100, None)


@pytest.mark.parametrize("priority", [0, -1000, 32767])
def test_grant_keeps_every_allowed_priority(org, admin_client, priority):
    # 0 used to become 100 (`or 100`)
    response = grant(admin_client, org, {"credits": "1", "reason": "r", "priority": priority})

    assert response.status_code == 201
    assert response.json()["priority"] == priority
    assert CreditLot.objects.get(organization=org).priority == priority


@pytest.mark.parametrize(
    ("overrides", "code", "message"),
    [
        ({"credits": "0"}, "validation_error", "credits: must be greater than zero"),
        ({"credits": "-5"}, "validation_error", "credits: must be greater than zero"),
        ({"credits": 2.5}, "validation_error", "credits: must be a decimal string or an integer"),
        ({"credits": "1.00001"}, "validation_error", "credits: must have at most 4 decimal places"),
        ({"credits": "1e40"}, "validation_error", "credits: is too large"),
        ({"credits": None}, "validation_error", "credits: this field is required"),
        ({"reason": None}, "validation_error", "reason: this field is required"),
        ({"reason": "r" * 501}, "validation_error", "reason: must be at most 500 characters"),
        ({"category": "gift"}, "validation_error", "category: must be promotional or paid"),
        ({"category": 1}, "validation_error", "category: must be a string"),
        ({"priority": 40000}, "validation_error", "priority: must be at most 32767"),
        ({"priority": -1001}, "validation_error", "priority: must be at least -1000"),
        ({"priority": "high"}, "validation_error", "priority: must be an integer"),
        ({"expires_at": "2026-01-01T00:00:00Z"}, "invalid_expiry", "The expiry must be in the future."),
        (
            {"expires_at": "2026-03-01T00:00:00"},
            "validation_error",
            "expires_at: must include a time zone (e.g. Z or +09:00)",
        ),
        ({"expires_at": "soon"}, "validation_error", "expires_at: must be an ISO 8601 date-time string"),
        (
            {"expires_at": "9999-12-31T23:59:59-10:00"},
            "validation_error",
            "expires_at: must be between the years 1970 and 9000",
        ),
    ],
)
def test_grant_bad_input_is_400_and_grants_nothing(org, admin_client, overrides, code, message):
    body = {"credits": "10", "reason": "promo", **overrides}
    body = {k: v for k, v in body.items() if v is not None}

    response = grant(admin_client, org, body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"] == message
    assert CreditLot.objects.count() == 0
    assert IdempotencyRecord.objects.count() == 0


def test_grant_with_a_far_expiry_leaves_the_organization_usable(org, allowance, admin_client, service_client):
    # a lot expiring late in year 9000 is stored and read back (year 10000 could not be read back)
    response = grant(admin_client, org, {"credits": "10", "reason": "r", "expires_at": "9000-12-31T00:00:00Z"})

    assert response.status_code == 201
    assert use(service_client, org, allowance.meter, "11").status_code == 201


def test_grant_that_would_overflow_the_balance_is_refused(org, admin_client):
    grant(admin_client, org, {"credits": "9000000000000000", "reason": "r"})

    response = grant(admin_client, org, {"credits": "9000000000000000", "reason": "r"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_credits"


def test_grant_to_an_unknown_organization_is_404(db, admin_client):
    response = send(admin_client, "post", "/api/v1/organizations/999999999/grants", {"credits": "1", "reason": "r"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organization_not_found"
    assert IdempotencyRecord.objects.count() == 0


# --- PUT /api/v1/organizations/{id}/spend-cap ---------------------------------------------------------


def test_spend_cap_set_denies_past_it_and_clear_lifts_it(org, allowance, admin_client, service_client):
    credits_grant(organization_id=org.pk, credits=Decimal("100"), now=NOW)
    url = f"/api/v1/organizations/{org.pk}/spend-cap"

    response = send(admin_client, "put", url, {"monthly_spend_cap": "15"})

    assert response.status_code == 200
    assert response.json() == {"organization": org.pk, "monthly_spend_cap": "15"}
    assert (
        service_client.get(f"/api/v1/organizations/{org.pk}/entitlements").json()["credits"]["monthly_spend_cap"]
        == "15"
    )
    # 10 included, then 3 tasks = 15 credits fit the cap; one more would pass it
    assert use(service_client, org, allowance.meter, "13").status_code == 201
    denied = use(service_client, org, allowance.meter, "1")
    assert denied.status_code == 402
    assert denied.json()["error"]["code"] == "spend_cap_reached"
    assert denied.json()["error"]["message"] == (
        "Your organization has reached its monthly credit spend cap of 15 credits. "
        "Raise the cap in billing settings, or wait until 2026-02-01 00:00 UTC."
    )
    assert denied.json()["error"]["resets_at"] == "2026-02-01T00:00:00+00:00"

    cleared = send(admin_client, "put", url, {"monthly_spend_cap": None})

    assert cleared.status_code == 200
    assert cleared.json() == {"organization": org.pk, "monthly_spend_cap": None}
    assert CreditAccount.objects.get(organization=org).monthly_spend_cap is None
    assert use(service_client, org, allowance.meter, "1").status_code == 201


def test_spend_cap_late_retry_replays_and_does_not_overwrite_a_newer_cap(org, admin_client):
    url = f"/api/v1/organizations/{org.pk}/spend-cap"
    first = send(admin_client, "put", url, {"monthly_spend_cap": "15"}, key="cap-1")
    send(admin_client, "put", url, {"monthly_spend_cap": "30"}, key="cap-2")

    retry = send(admin_client, "put", url, {"monthly_spend_cap": "15"}, key="cap-1")
    reused = send(admin_client, "put", url, {"monthly_spend_cap": "99"}, key="cap-1")

    assert (retry.status_code, retry.json()) == (200, first.json())
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert CreditAccount.objects.get(organization=org).monthly_spend_cap == Decimal("30")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"monthly_spend_cap": "-1"}, "monthly_spend_cap: must not be negative"),
        ({"monthly_spend_cap": "lots"}, "monthly_spend_cap: must be a decimal number"),
        ({"monthly_spend_cap": 1.5}, "monthly_spend_cap: must be a decimal string or an integer"),
        ([], "The body must be a JSON object."),
    ],
)
def test_spend_cap_bad_input_is_400(org, admin_client, body, message):
    response = send(admin_client, "put", f"/api/v1/organizations/{org.pk}/spend-cap", body)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == message
    assert CreditAccount.objects.get(organization=org).monthly_spend_cap is None


def test_spend_cap_of_an_unknown_organization_is_404(db, admin_client):
    response = send(admin_client, "put", "/api/v1/organizations/999999999/spend-cap", {"monthly_spend_cap": "1"})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organization_not_found"
