"""Django admin: every page loads with data, read-only models stay read-only, and credits change
only through the confirmed grant/adjust actions (with the operator and a reason on the ledger)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import ApiKey, Membership, NotificationPreference, Organization, Role, ServiceToken, User
from accounts.services import api_key_create, notification_preferences_set, service_token_create
from billing.models import (
    BillingNotice,
    BillingNoticeKind,
    CreditAccount,
    CreditLot,
    CreditPack,
    CreditPurchase,
    EntryKind,
    LedgerEntry,
    LotCategory,
    StripeCustomer,
)
from billing.services import credits_grant
from core.models import BenchmarkRow, IdempotencyRecord
from plans.models import Meter, Plan, PlanAllowance, Product, Subscription
from plans.selectors import catalogue
from tests.factories import T0, AllowanceFactory, PlanFactory, UserFactory, make_org
from usage.models import AllowanceWindow, DailyUsage, Notice, NoticeKind, Reservation, RollupCursor, UsageEvent
from usage.services import UsageInput, reservation_create, usage_record

pytestmark = pytest.mark.django_db

OUR_APPS = {"core", "accounts", "plans", "billing", "usage"}
READ_ONLY = [
    UsageEvent,
    LedgerEntry,
    CreditLot,
    Notice,
    AllowanceWindow,
    Reservation,
    IdempotencyRecord,
    CreditPurchase,
    StripeCustomer,
    DailyUsage,
    RollupCursor,
    BenchmarkRow,
    BillingNotice,
    NotificationPreference,
]


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # PBKDF2's 1M rounds cost about a second per user on a busy machine; these tests make dozens.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def operator(db) -> User:
    return User.objects.create_superuser("ops@example.com", "pw-123456789", name="Ops")


def https_client() -> Client:
    # Production settings redirect http to https unless DEBUG: speak https, as a browser would.
    return Client(HTTP_X_FORWARDED_PROTO="https")


@pytest.fixture
def site(operator) -> Client:
    client = https_client()
    client.force_login(operator)
    return client


@pytest.fixture
def data():
    """One row (at least) of every model, made through the services where they exist."""
    allowance = AllowanceFactory(limit=Decimal("2"))
    owner = UserFactory(email="owner@acme.test")
    org = make_org(plan=allowance.plan, owner=owner)
    Organization.objects.filter(pk=org.pk).update(name="Acme")
    org.refresh_from_db()
    lot = credits_grant(organization_id=org.pk, credits=Decimal("50"), now=T0, reason="welcome", external_ref="pi_abc")
    meter = allowance.meter.key
    usage_record(
        item=UsageInput(organization_id=org.pk, meter=meter, quantity=Decimal("3"), idempotency_key="evt-1"), now=T0
    )
    reservation_create(
        item=UsageInput(organization_id=org.pk, meter=meter, quantity=Decimal("1"), idempotency_key="res-1"),
        ttl_seconds=600,
        now=T0,
    )
    Notice.objects.create(
        organization=org, kind=NoticeKind.CREDITS_LOW, dedupe_key="low:1", payload={"balance": "5"}, created_at=T0
    )
    IdempotencyRecord.objects.create(
        scope="organizations.create", key="idem-1", request_hash="x", http_status=201, response={"id": 1}
    )
    pack = CreditPack.objects.create(key="pack-1000", name="1,000 credits", credits=Decimal("1000"), price_amount=4000)
    CreditPurchase.objects.create(
        organization=org,
        pack=pack,
        credits=pack.credits,
        amount=4000,
        currency="usd",
        payment_intent_id="pi_pending",
        created_at=T0,
        updated_at=T0,
    )
    BillingNotice.objects.create(
        organization=org,
        kind=BillingNoticeKind.TOPUP_FAILED,
        dedupe_key="topup:1",
        subject="Top-up failed",
        body="...",
        created_at=T0,
    )
    StripeCustomer.objects.create(
        organization=org, customer_id="cus_1", card_brand="visa", card_last4="4242", created_at=T0, updated_at=T0
    )
    DailyUsage.objects.create(organization=org, meter=allowance.meter, day=T0.date(), quantity=Decimal("3"), events=1)
    RollupCursor.objects.create(name="daily_usage", last_event_id=1)
    BenchmarkRow.objects.create(note="baseline")
    api_key_create(organization=org, name="ci key")
    service_token_create(name="worker", scope="usage")
    notification_preferences_set(
        membership=Membership.objects.get(organization=org, user=owner), choices={"usage_alerts": False}, now=T0
    )
    return {"org": org, "owner": owner, "allowance": allowance, "lot": lot}


def registered_models():
    return [model for model in admin.site._registry if model._meta.app_label in OUR_APPS]


def url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


# Pages ---------------------------------------------------------------------------------------


def test_every_model_of_ours_is_registered():
    registered = {model.__name__ for model in registered_models()}
    assert registered == {
        "IdempotencyRecord",
        "User",
        "Membership",
        "ApiKey",
        "ServiceToken",
        "Organization",
        "Product",
        "Meter",
        "Plan",
        "Subscription",
        "CreditAccount",
        "CreditPack",
        "CreditLot",
        "LedgerEntry",
        "UsageEvent",
        "AllowanceWindow",
        "Reservation",
        "Notice",
        "BenchmarkRow",
        "CreditPurchase",
        "StripeCustomer",
        "DailyUsage",
        "RollupCursor",
        "BillingNotice",
        "NotificationPreference",
    }


def test_every_changelist_and_change_page_loads_with_data(site, data):
    for model in registered_models():
        obj = model._default_manager.order_by("pk").first()
        assert obj is not None, f"no {model.__name__} row to show"
        # The changelist lists the row (a link to its change page)...
        response = site.get(url(model, "changelist"))
        assert response.status_code == 200, model.__name__
        assert url(model, "change", obj.pk) in response.content.decode(), model.__name__
        # ...and its change page loads.
        response = site.get(url(model, "change", obj.pk))
        assert response.status_code == 200, model.__name__


def test_changelists_do_not_count_every_row(site, data):
    for model in registered_models():
        response = site.get(url(model, "changelist"))
        assert response.context["cl"].show_full_result_count is False, model.__name__


@pytest.mark.parametrize(
    ("model", "query", "expected"),
    [
        (UsageEvent, "evt-1", "evt-1"),
        (Organization, "owner@acme.test", "Acme"),
        (CreditLot, "pi_abc", "pi_abc"),
        (Reservation, "res-1", "res-1"),
        (User, "owner@acme", "owner@acme.test"),
    ],
)
def test_search_by_keys_and_emails(site, data, model, query, expected):
    response = site.get(url(model, "changelist"), {"q": query})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) != []
    assert expected in response.content.decode()


def test_numeric_search_finds_rows_by_organization_id(site, data):
    org = data["org"]
    other = make_org(plan=data["allowance"].plan)
    credits_grant(organization_id=other.pk, credits=Decimal("1"), now=T0)
    response = site.get(url(LedgerEntry, "changelist"), {"q": str(org.pk)})
    shown = {entry.organization_id for entry in response.context["cl"].result_list}
    assert shown == {org.pk}


def test_changelist_queries_do_not_grow_with_rows(site, data):
    # Given the pages as they are, then 20 more organizations with ledger entries and events
    def counts() -> dict[str, int]:
        result = {}
        models = (LedgerEntry, UsageEvent, Organization, CreditLot, AllowanceWindow, Reservation, Membership)
        for model in (*models, NotificationPreference):
            with CaptureQueriesContext(connection) as ctx:
                assert site.get(url(model, "changelist")).status_code == 200
            result[model.__name__] = len(ctx.captured_queries)
        return result

    before = counts()
    for i in range(20):
        org = make_org(plan=data["allowance"].plan, owner=UserFactory())
        notification_preferences_set(
            membership=org.memberships.get(), choices={"usage_alerts": False, "credit_balance": True}, now=T0
        )
        credits_grant(organization_id=org.pk, credits=Decimal("9"), now=T0)
        usage_record(
            item=UsageInput(
                organization_id=org.pk,
                meter=data["allowance"].meter.key,
                quantity=Decimal("3"),
                idempotency_key=f"k{i}",
            ),
            now=T0,
        )
        reservation_create(
            item=UsageInput(
                organization_id=org.pk,
                meter=data["allowance"].meter.key,
                quantity=Decimal("1"),
                idempotency_key=f"r{i}",
            ),
            ttl_seconds=60,
            now=T0,
        )
    # Then every changelist runs the same number of queries (no query per row)
    assert counts() == before


def test_organization_page_summarises_plan_and_balance(site, data):
    org = data["org"]
    page = site.get(url(Organization, "change", org.pk)).content.decode()
    plan = data["allowance"].plan
    balance = CreditAccount.objects.get(organization=org).balance
    assert balance == Decimal("40")  # 50 granted, 5 for the third unit of usage (2 included), 5 held
    assert f"{plan.name} (Active)" in page
    assert "Balance 40 · monthly spend cap none · spent this month 10" in page
    assert f"{url(LedgerEntry, 'changelist')}?organization__id__exact={org.pk}" in page
    # And the ledger link it offers filters to this organization
    response = site.get(url(LedgerEntry, "changelist"), {"organization__id__exact": org.pk})
    assert response.status_code == 200
    assert {e.organization_id for e in response.context["cl"].result_list} == {org.pk}


# Read-only models ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", READ_ONLY, ids=lambda m: m.__name__)
def test_read_only_models_refuse_add_change_delete(site, data, model):
    obj = model._default_manager.order_by("pk").first()
    count = model._default_manager.count()
    # Add: refused
    assert site.get(url(model, "add")).status_code == 403
    assert site.post(url(model, "add"), {}).status_code == 403
    # Change: the page is view only, and a POST is refused
    page = site.get(url(model, "change", obj.pk))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert site.post(url(model, "change", obj.pk), {}).status_code == 403
    # Delete: refused, one by one and as a bulk action
    assert site.get(url(model, "delete", obj.pk)).status_code == 403
    assert site.post(url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
    site.post(url(model, "changelist"), {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"})
    assert model._default_manager.count() == count
    assert model._default_manager.filter(pk=obj.pk).exists()


def test_credential_pages_show_no_secret_and_revoke(site, data):
    key = ApiKey.objects.get()
    token = ServiceToken.objects.get()
    page = site.get(url(ApiKey, "change", key.pk)).content.decode()
    assert key.key_hash not in page
    assert key.prefix in page
    page = site.get(url(ServiceToken, "change", token.pk)).content.decode()
    assert token.token_hash not in page
    assert site.get(url(ApiKey, "add")).status_code == 403

    response = site.post(url(ApiKey, "changelist"), {"action": "revoke", "_selected_action": [key.pk]})
    assert response.status_code == 302
    response = site.post(url(ServiceToken, "changelist"), {"action": "revoke", "_selected_action": [token.pk]})
    assert response.status_code == 302
    key.refresh_from_db()
    token.refresh_from_db()
    assert key.revoked_at is not None
    assert token.revoked_at is not None


# Catalogue -----------------------------------------------------------------------------------


def test_saving_a_plan_updates_the_cached_catalogue(site, data):
    allowance: PlanAllowance = data["allowance"]
    plan = allowance.plan
    assert catalogue().allowances_for(plan.pk, allowance.meter_id)[0].limit == Decimal("2")  # cached now
    form = {
        "key": plan.key,
        "name": plan.name,
        "price_amount": plan.price_amount,
        "currency": plan.currency,
        "period_months": 1,
        "is_public": "on",
        "sort_order": 0,
        "allowances-TOTAL_FORMS": 1,
        "allowances-INITIAL_FORMS": 1,
        "allowances-MIN_NUM_FORMS": 0,
        "allowances-MAX_NUM_FORMS": 1000,
        "allowances-0-id": allowance.pk,
        "allowances-0-plan": plan.pk,
        "allowances-0-meter": allowance.meter_id,
        "allowances-0-limit": "7",
        "allowances-0-window_kind": "period",
        "allowances-0-window_seconds": "",
        "allowances-0-overage": "credits",
    }
    response = site.post(url(Plan, "change", plan.pk), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert catalogue().allowances_for(plan.pk, allowance.meter_id)[0].limit == Decimal("7")


def test_catalogue_models_are_editable(site, data):
    for model in (Product, Meter, Plan, CreditPack):
        assert site.get(url(model, "add")).status_code == 200, model.__name__


def test_changing_a_subscription_plan_goes_through_the_service(site, data):
    org = data["org"]
    sub = Subscription.objects.get(organization=org)
    assert sub.anchor == T0
    new_plan = PlanFactory(key="pro")
    response = site.post(url(Subscription, "change", sub.pk), {"plan": new_plan.pk, "status": "active"})
    assert response.status_code == 302
    sub.refresh_from_db()
    assert sub.plan_id == new_plan.pk
    assert sub.anchor > T0  # the service starts the new plan's periods now


def test_operator_can_add_a_user_by_email(site, db):
    response = site.post(
        url(User, "add"),
        {
            "email": "New.Person@Example.com",
            "usable_password": "true",
            "password1": "a-Long-pass-8812",
            "password2": "a-Long-pass-8812",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    user = User.objects.get(email="new.person@example.com")
    assert user.check_password("a-Long-pass-8812")


# Grant and adjust credits --------------------------------------------------------------------


def _start(site, action: str, orgs: list[Organization]):
    return site.post(url(Organization, "changelist"), {"action": action, "_selected_action": [o.pk for o in orgs]})


def _step(site, action: str, orgs: list[Organization], button: str, token: str = "", **fields):
    data = {"action": action, "_selected_action": [o.pk for o in orgs], button: "1", **fields}
    if token:
        data["confirm_token"] = token
    return site.post(url(Organization, "changelist"), data)


def _token(response) -> str:
    match = re.search(r'name="confirm_token" value="([^"]+)"', response.content.decode())
    return match.group(1) if match else ""


@pytest.fixture
def two_orgs(data):
    second = make_org(plan=data["allowance"].plan)
    credits_grant(organization_id=second.pk, credits=Decimal("10"), now=T0)
    return [data["org"], second]


def test_grant_credits_confirms_then_grants_with_actor_and_reason(site, operator, two_orgs):
    first, second = two_orgs
    # When the operator picks the action: a page lists the organizations and their balances
    page = _start(site, "grant_credits", two_orgs)
    assert page.status_code == 200
    assert [row["organization"].pk for row in page.context["rows"]] == [first.pk, second.pk]
    assert [row["balance_text"] for row in page.context["rows"]] == ["40", "10"]
    assert _token(page) == ""  # nothing to confirm before a preview
    # And a preview shows each balance before and after
    fields = {
        "credits": "100.5",
        "category": LotCategory.PAID,
        "reason": "Outage credit INC-42",
        "expires_at": "",
        "priority": "100",
    }
    preview = _step(site, "grant_credits", two_orgs, "_preview", **fields)
    assert preview.status_code == 200
    text = preview.content.decode()
    assert "40 → <strong>140.5</strong>" in text
    assert "10 → <strong>110.5</strong>" in text
    token = _token(preview)
    assert token
    assert CreditLot.objects.filter(reason="Outage credit INC-42").count() == 0  # a preview changes nothing
    # When confirmed
    done = _step(site, "grant_credits", two_orgs, "_confirm", token, **fields)
    assert done.status_code == 302
    # Then each organization has a new paid lot and a GRANT entry with the operator and the reason
    for org, balance in ((first, Decimal("140.5")), (second, Decimal("110.5"))):
        lot = CreditLot.objects.get(organization=org, reason="Outage credit INC-42")
        assert (lot.granted, lot.remaining, lot.category, lot.actor_id) == (
            Decimal("100.5"),
            Decimal("100.5"),
            "paid",
            operator.pk,
        )
        entry = LedgerEntry.objects.get(lot=lot)
        assert (entry.kind, entry.amount, entry.actor_id, entry.reason) == (
            EntryKind.GRANT,
            Decimal("100.5"),
            operator.pk,
            "Outage credit INC-42",
        )
        assert entry.balance_after == balance
        assert CreditAccount.objects.get(organization=org).balance == balance
        assert (
            LogEntry.objects.filter(
                object_id=str(org.pk), change_message="Grant 100.5 credits: Outage credit INC-42"
            ).count()
            == 1
        )
    # And a double-submitted confirmation grants nothing more
    again = _step(site, "grant_credits", two_orgs, "_confirm", token, **fields)
    assert again.status_code == 302
    assert CreditLot.objects.filter(reason="Outage credit INC-42").count() == 2


def test_grant_with_expiry(site, data):
    org = data["org"]
    fields = {
        "credits": "5",
        "category": "promotional",
        "reason": "trial",
        "expires_at": "2099-01-31 23:59",
        "priority": "10",
    }
    token = _token(_step(site, "grant_credits", [org], "_preview", **fields))
    assert _step(site, "grant_credits", [org], "_confirm", token, **fields).status_code == 302
    lot = CreditLot.objects.get(organization=org, reason="trial")
    assert lot.expires_at is not None
    assert (lot.expires_at.isoformat(), lot.priority) == ("2099-01-31T23:59:00+00:00", 10)


def test_reason_is_required(site, data):
    org = data["org"]
    fields = {"credits": "10", "category": "promotional", "reason": "   ", "expires_at": "", "priority": "100"}
    page = _step(site, "grant_credits", [org], "_preview", **fields)
    assert page.status_code == 200
    assert page.context["form"].errors == {"reason": ["This field is required."]}
    assert _token(page) == ""
    # Even a forged confirmation without a reason grants nothing
    page = _step(site, "grant_credits", [org], "_confirm", "forged", **fields)
    assert page.context["form"].errors == {"reason": ["This field is required."]}
    assert CreditLot.objects.filter(organization=org).count() == 1


def test_invalid_credits_and_past_expiry_are_form_errors(site, data):
    org = data["org"]
    fields = {
        "credits": "0",
        "category": "promotional",
        "reason": "x",
        "expires_at": "2001-01-01 00:00",
        "priority": "100",
    }
    page = _step(site, "grant_credits", [org], "_preview", **fields)
    assert page.context["form"].errors == {
        "credits": ["Grant more than zero credits."],
        "expires_at": ["The expiry must be in the future."],
    }


def test_confirm_after_changing_the_form_previews_again(site, data):
    org = data["org"]
    fields = {"credits": "10", "category": "promotional", "reason": "r", "expires_at": "", "priority": "100"}
    token = _token(_step(site, "grant_credits", [org], "_preview", **fields))
    # When the amount is edited after the preview and confirmed
    page = _step(site, "grant_credits", [org], "_confirm", token, **{**fields, "credits": "1000"})
    # Then nothing is granted, and the new amount is previewed
    assert page.status_code == 200
    assert CreditLot.objects.filter(organization=org).count() == 1
    assert "40 → <strong>1040</strong>" in page.content.decode()
    assert _token(page) not in ("", token)


def test_adjust_credits_down_with_actor_and_reason(site, operator, data):
    org = data["org"]
    fields = {"credits": "-20", "reason": "Duplicate grant"}
    preview = _step(site, "adjust_credits", [org], "_preview", **fields)
    assert "40 → <strong>20</strong>" in preview.content.decode()
    done = _step(site, "adjust_credits", [org], "_confirm", _token(preview), **fields)
    assert done.status_code == 302
    entry = LedgerEntry.objects.get(organization=org, kind=EntryKind.ADJUST)
    assert (entry.amount, entry.actor_id, entry.reason, entry.balance_after) == (
        Decimal("-20"),
        operator.pk,
        "Duplicate grant",
        Decimal("20"),
    )
    assert CreditAccount.objects.get(organization=org).balance == Decimal("20")


def test_adjust_past_the_balance_cannot_be_confirmed(site, two_orgs):
    # Given two organizations with 40 and 10 credits
    fields = {"credits": "-20", "reason": "clawback"}
    preview = _step(site, "adjust_credits", two_orgs, "_preview", **fields)
    # Then the preview flags the second and offers no confirmation
    assert [row["refused"] for row in preview.context["rows"]] == [False, True]
    assert _token(preview) == ""
    assert "use a smaller amount" in preview.content.decode()


def test_service_refusal_is_shown_and_changes_nothing(site, two_orgs):
    # Given the second organization's balance includes 20 credits that only become usable tomorrow
    first, second = two_orgs
    credits_grant(organization_id=second.pk, credits=Decimal("20"), now=T0, effective_at=T0 + timedelta(days=36500))
    fields = {"credits": "-20", "reason": "clawback"}
    preview = _step(site, "adjust_credits", two_orgs, "_preview", **fields)
    assert [(row["balance_text"], row["new_balance_text"]) for row in preview.context["rows"]] == [
        ("40", "20"),
        ("30", "10"),
    ]
    # When confirmed
    page = _step(site, "adjust_credits", two_orgs, "_confirm", _token(preview), **fields)
    # Then the service's refusal is shown and neither organization changed (all or nothing)
    assert page.status_code == 200
    assert page.context["form"].non_field_errors() == ["Only 10 credits can be removed now."]
    assert LedgerEntry.objects.filter(kind=EntryKind.ADJUST).count() == 0
    assert [CreditAccount.objects.get(organization=o).balance for o in two_orgs] == [Decimal("40"), Decimal("30")]


def test_credit_actions_need_permission(db, data):
    # Given a staff user who may view and change organizations but not add credit lots
    from django.contrib.auth.models import Permission

    staff = User.objects.create_user("staff@example.com", "pw-123456789", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__in=["view_organization", "change_organization"]))
    client = https_client()
    client.force_login(staff)
    page = client.get(url(Organization, "changelist"))
    assert page.status_code == 200
    assert "grant_credits" not in page.content.decode()
    # When posting the action anyway, nothing is granted
    fields = {"credits": "5", "reason": "x", "category": "promotional", "priority": "100"}
    client.post(
        url(Organization, "changelist"),
        {"action": "grant_credits", "_selected_action": [data["org"].pk], "_confirm": "1", **fields},
    )
    assert CreditLot.objects.filter(organization=data["org"]).count() == 1


def test_organization_cannot_be_added_or_deleted_here(site, data):
    assert site.get(url(Organization, "add")).status_code == 403
    assert site.get(url(Organization, "delete", data["org"].pk)).status_code == 403
    assert Membership.objects.filter(organization=data["org"], role=Role.OWNER).count() == 1


def test_spend_cap_edit_goes_through_the_service(site, data):
    account = CreditAccount.objects.get(organization=data["org"])
    response = site.post(url(CreditAccount, "change", account.pk), {"monthly_spend_cap": "250"})
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.monthly_spend_cap == Decimal("250")
    assert account.balance == Decimal("40")


def test_grant_preview_expiry_is_read_in_utc(site, data):
    # The form says "(UTC)": 2099-06-01 12:00 is stored as that instant in UTC.
    org = data["org"]
    fields = {
        "credits": "1",
        "category": "promotional",
        "reason": "utc",
        "expires_at": "2099-06-01 12:00",
        "priority": "100",
    }
    token = _token(_step(site, "grant_credits", [org], "_preview", **fields))
    _step(site, "grant_credits", [org], "_confirm", token, **fields)
    lot = CreditLot.objects.get(reason="utc")
    assert lot.expires_at is not None
    assert lot.expires_at.utcoffset() == timedelta(0)
    assert (lot.expires_at.year, lot.expires_at.month, lot.expires_at.day, lot.expires_at.hour) == (2099, 6, 1, 12)


def test_big_unfiltered_lists_are_counted_from_the_planner_estimate(data, require_postgres):
    from core.admin import LargeTablePaginator

    class Estimating(LargeTablePaginator):
        estimate_above = -2  # any table counts as big here (reltuples is -1 before the first ANALYZE)

    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'billing_ledgerentry'::regclass")
        (estimate,) = cursor.fetchone()
    # Unfiltered: the estimate, and no COUNT(*)
    with CaptureQueriesContext(connection) as ctx:
        assert Estimating(LedgerEntry.objects.order_by("-id"), 50).count == estimate
    assert [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"]] == []
    # Filtered: an exact count
    assert Estimating(LedgerEntry.objects.filter(organization=data["org"]), 50).count == 3


def test_credit_actions_refuse_too_many_organizations(site, two_orgs, monkeypatch):
    import billing.admin

    monkeypatch.setattr(billing.admin, "MAX_ORGANIZATIONS_PER_ACTION", 1)
    response = _start(site, "grant_credits", two_orgs)
    assert response.status_code == 302
    messages = [str(m) for m in site.get(response["Location"]).context["messages"]]
    assert messages == ["Select at most 1 organizations for a credit change."]
