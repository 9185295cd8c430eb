"""The customer dashboard's pages: permissions, forms, the limit banner, CSV export, team, language.

Catalogue: the demo one (seed_demo's Free / Plus / Pro). Time is frozen at NOW (a Saturday, 12:00
UTC); the Free plan's codex.cloud_task allows 2 tasks per rolling 5 hours and 10 per 7 days.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html import unescape

import pytest
import time_machine
from django.core import mail
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import ApiKey, Membership, Role, User
from accounts.services import api_key_create, membership_set
from billing.services import credits_grant, subscription_change
from billing.services.provision import user_signup
from plans.models import Plan, Subscription
from plans.selectors import catalogue_clear
from usage.management.commands.seed_demo import seed_catalogue
from usage.models import DailyUsage, UsageEvent
from usage.rollups import daily_usage_rollup
from usage.services import UsageInput, usage_record

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PASSWORD = "a-long-password-123"


@pytest.fixture(autouse=True)
def _plain_http(settings):
    settings.SECURE_SSL_REDIRECT = False
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast fixtures


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield NOW


@pytest.fixture
def world(db, frozen):
    """Owner Olga (personal org on Free), member Mia in Olga's org, and Otto with his own org."""
    seed_catalogue()
    catalogue_clear()
    olga, org = user_signup(email="olga@example.com", password=PASSWORD, name="Olga", now=NOW)
    mia, mia_org = user_signup(email="mia@example.com", password=PASSWORD, name="Mia", now=NOW)
    membership_set(organization=org, user=mia, role=Role.MEMBER)
    otto, other = user_signup(email="otto@example.com", password=PASSWORD, name="Otto", now=NOW)
    return {"olga": olga, "org": org, "mia": mia, "mia_org": mia_org, "otto": otto, "other": other}


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def record(org, meter: str, quantity: str = "1", *, at: datetime = NOW, user=None):
    return usage_record(
        item=UsageInput(org.pk, meter, Decimal(quantity), str(uuid.uuid4()), user_id=user.pk if user else None), now=at
    )


def text(response) -> str:
    """The page's visible text, whitespace collapsed (for exact phrases across template lines)."""
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", response.content.decode(), flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", body))).strip()


ORG_PAGES = ["org_overview", "org_overview_live", "org_usage", "org_credits", "org_plans", "org_api_keys", "org_team"]
PAGE_TEXT = {
    "org_overview": "Overview Olga Plan Free",
    "org_overview_live": "Updated Nov 28, 2026, 12:00; refreshes every 30 seconds.",
    "org_usage": "Usage Days run midnight to midnight in UTC",
    "org_credits": "Credits Credits pay for usage beyond your plan.",
    "org_plans": "Plans Each plan includes usage per window",
    "org_api_keys": "API keys Keys let your programs call the API",
    "org_team": "Team Owners and admins manage members",
}


# Permissions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ORG_PAGES)
def test_each_page_renders_for_the_owner(world, name):
    # given the owner of the organization
    client = client_for(world["olga"])

    # when she opens the page
    response = client.get(reverse(name, args=[world["org"].pk]))

    # then it renders
    assert response.status_code == 200
    assert PAGE_TEXT[name] in text(response)


@pytest.mark.parametrize("name", [*ORG_PAGES, "org_events_csv"])
def test_each_page_is_404_for_a_member_of_another_organization(world, name):
    # given Otto, who is not a member of Olga's organization
    client = client_for(world["otto"])

    # when he opens one of its pages
    response = client.get(reverse(name, args=[world["org"].pk]))

    # then the organization looks absent
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("name", "extra"),
    [("org_api_key_revoke", [1]), ("org_team_invite", []), ("org_team_role", [1]), ("org_team_remove", [1])],
)
def test_actions_are_404_for_a_member_of_another_organization(world, name, extra):
    client = client_for(world["otto"])

    response = client.post(reverse(name, args=[world["org"].pk, *extra]), {"email": "x@example.com", "role": "member"})

    assert response.status_code == 404


def test_pages_ask_anonymous_visitors_to_log_in(world):
    response = Client().get(reverse("org_overview", args=[world["org"].pk]))

    assert response.status_code == 302
    assert response["Location"] == f"/login/?next=/orgs/{world['org'].pk}/"


def test_unknown_organization_is_404(world):
    response = client_for(world["olga"]).get(reverse("org_overview", args=[999999]))

    assert response.status_code == 404


def test_home_lands_on_the_personal_organization_then_remembers_the_last_one(world):
    client = client_for(world["mia"])

    first = client.get("/")
    client.get(reverse("org_overview", args=[world["org"].pk]))
    second = client.get("/")

    assert first["Location"] == f"/orgs/{world['mia_org'].pk}/"
    assert second["Location"] == f"/orgs/{world['org'].pk}/"


def test_the_switcher_lists_every_organization_of_the_viewer(world):
    response = client_for(world["mia"]).get(reverse("org_overview", args=[world["org"].pk]))

    html = response.content.decode()
    assert f'href="/orgs/{world["mia_org"].pk}/"' in html
    assert f'href="/orgs/{world["org"].pk}/" aria-current="true"' in html


# Sign up and log in -------------------------------------------------------------------------------


def test_signup_creates_a_personal_organization_on_the_free_plan_and_logs_in(db, frozen):
    seed_catalogue()
    client = Client()

    response = client.post(reverse("signup"), {"name": "Ann", "email": "Ann@Example.com", "password": PASSWORD})

    user = User.objects.get(email="ann@example.com")
    membership = Membership.objects.get(user=user)
    assert response.status_code == 302
    assert response["Location"] == f"/orgs/{membership.organization_id}/"
    assert (membership.role, membership.organization.is_personal) == ("owner", True)
    assert membership.organization.subscription.plan.key == "free"
    assert client.get(response["Location"]).status_code == 200


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"email": "not-an-email", "password": PASSWORD}, "email", "Enter a valid email address."),
        (
            {"email": "olga@example.com", "password": PASSWORD},
            "email",
            "An account with this email address already exists. Log in instead.",
        ),
        (
            {"email": "new@example.com", "password": "12345"},
            "password",
            "This password is too short. It must contain at least 8 characters.",
        ),
        ({"email": "new@example.com", "password": ""}, "password", "This field is required."),
        (
            {"email": "x" * 300 + "@example.com", "password": PASSWORD},
            "email",
            "Ensure this value has at most 254 characters (it has 312).",
        ),
    ],
)
def test_signup_shows_field_errors(world, data, field, message):
    response = Client().post(reverse("signup"), data)

    assert response.status_code == 400
    assert response.context["form"].errors[field][0] == message
    assert message in text(response)
    assert User.objects.count() == 3


def test_login_by_email_is_case_insensitive_and_lands_on_the_overview(world):
    client = Client()

    response = client.post(reverse("login"), {"username": "OLGA@example.com", "password": PASSWORD}, follow=True)

    assert response.redirect_chain[-1] == (f"/orgs/{world['org'].pk}/", 302)


def test_login_with_a_wrong_password_shows_an_error(world):
    response = Client().post(reverse("login"), {"username": "olga@example.com", "password": "wrong"})

    assert response.status_code == 200
    assert "Please enter a correct email address and password." in text(response)


def test_logout_is_a_post(world):
    client = client_for(world["olga"])

    response = client.post(reverse("logout"))

    assert response["Location"] == "/login/"
    assert client.get("/")["Location"] == "/login/?next=/"


def test_password_reset_mails_a_link_even_to_invited_people_without_a_password(world):
    invited, _ = user_signup(email="invited@example.com", password=None, now=NOW)

    response = Client().post(reverse("password_reset"), {"email": "invited@example.com"})

    assert response["Location"] == reverse("password_reset_done")
    assert [m.to for m in mail.outbox] == [["invited@example.com"]]
    assert "/password-reset/" in mail.outbox[0].body


# Overview: meters, banner, balance -----------------------------------------------------------------


def test_overview_shows_each_window_as_a_meter_with_numbers_and_reset_time(world):
    # given one of two cloud tasks used in the 5-hour window, and a viewer in Tokyo
    record(world["org"], "codex.cloud_task")
    world["olga"].timezone = "Asia/Tokyo"
    world["olga"].save()

    # when the owner opens the overview
    response = client_for(world["olga"]).get(reverse("org_overview", args=[world["org"].pk]))

    # then the 5-hour window is a labelled <meter> with used / limit, percent and the local reset time
    body = response.content.decode()
    page = text(response)
    allowance = response.context["live"].meters[1].windows[0]
    assert '<label for="meter-codex-cloud_task-' in body
    assert re.search(
        r'<meter id="meter-codex-cloud_task-\d+" class="meter meter-ok" min="0" max="2" value="1"\s+'
        r'low="1.59" high="1.9" optimum="0">',
        body,
    )
    assert "1 / 2 tasks · 50% used" in page
    assert "Resets in 5 h 0 min · Nov 29, 2026, 02:00 (Asia/Tokyo)" in page
    assert allowance.resets_at == NOW + timedelta(hours=5)
    assert "Usage limit reached" not in page


def test_windows_at_80_percent_warn_in_words(world):
    for _ in range(8):
        record(world["org"], "codex.local_task")

    response = client_for(world["olga"]).get(reverse("org_overview", args=[world["org"].pk]))

    assert "Warning: 80% of this window is used." in text(response)
    assert "Almost used up" in text(response)


def test_owner_on_free_plan_sees_the_limit_banner_with_reset_time_and_upgrade(world):
    # given both cloud tasks of the 5-hour window used, and no credits
    record(world["org"], "codex.cloud_task", "2")

    # when the owner opens the overview
    response = client_for(world["olga"]).get(reverse("org_overview", args=[world["org"].pk]))

    # then one banner says which meter, when it clears, and offers the upgrade
    page = text(response)
    assert (
        "Usage limit reached You've reached your Free plan's usage limit for Codex cloud tasks. "
        "Upgrade to a paid plan for more usage. Resets in 5 h 0 min · Nov 28, 2026, 17:00 (UTC) Upgrade"
    ) in page
    assert "Ask an owner" not in page
    # and the weekly window, which is not used up, is marked as not usable
    assert "Not usable until the 5 hours window resets." in page


def test_member_sees_ask_an_owner_instead_of_a_button(world):
    record(world["org"], "codex.cloud_task", "2")

    response = client_for(world["mia"]).get(reverse("org_overview", args=[world["org"].pk]))

    page = text(response)
    assert "Ask an owner to upgrade the plan." in page
    assert "Ask an owner — Owners: olga@example.com" in page
    assert 'data-open-dialog="buy-dialog"' not in response.content.decode()
    assert "buy-dialog" not in response.content.decode()


def test_owner_on_a_paid_plan_is_offered_credits(world):
    subscription_change(organization_id=world["org"].pk, plan_key="plus", now=NOW)
    catalogue_clear()
    record(world["org"], "codex.cloud_task", "10")

    response = client_for(world["olga"]).get(reverse("org_overview", args=[world["org"].pk]))

    page = text(response)
    assert "You've reached your Plus plan's usage limit for Codex cloud tasks. Buy credits to keep working now." in page
    assert (
        '<button type="button" class="button button-primary" data-open-dialog="buy-dialog">'
        in response.content.decode()
    )


def test_with_credits_an_exhausted_window_draws_credits_and_shows_no_banner(world):
    credits_grant(organization_id=world["org"].pk, credits=Decimal("100"), now=NOW, reason="test")
    record(world["org"], "codex.cloud_task", "2")

    response = client_for(world["olga"]).get(reverse("org_overview", args=[world["org"].pk]))

    page = text(response)
    assert "Usage limit reached" not in page
    assert "Included usage is used up: each task now costs 25 credits." in page
    assert "Credit balance 100 credits" in page


def test_the_buy_dialog_without_a_card_offers_to_add_one(world):
    # (buying itself: tests/billing/test_views.py and tests/browser/test_buy.py, with localstripe)
    response = client_for(world["olga"]).get(reverse("org_overview", args=[world["org"].pk]))

    html = response.content.decode()
    dialog = html[html.index('<dialog id="buy-dialog"') : html.index("</dialog>")]
    assert 'aria-labelledby="buy-title"' in dialog
    assert "Payments arrive in the next release." not in dialog
    assert '<h3 id="card-setup-title">Add a card</h3>' in dialog
    assert "data-pay-button" not in dialog


def test_the_live_partial_swaps_the_status_region_out_of_band(world):
    record(world["org"], "codex.cloud_task", "2")

    response = client_for(world["olga"]).get(
        reverse("org_overview_live", args=[world["org"].pk]), HTTP_HX_REQUEST="true"
    )

    html = response.content.decode()
    assert html.lstrip().startswith('<div id="live" class="live" hx-get="/orgs/')
    assert 'hx-trigger="every 30s, dashboard:refresh from:body"' in html
    assert '<p hx-swap-oob="innerHTML:#live-status">Usage limit reached</p>' in html
    assert "<html" not in html


# Japanese -------------------------------------------------------------------------------------------


def test_switching_to_japanese_translates_the_page_and_is_remembered(world):
    record(world["org"], "codex.cloud_task", "2")
    client = client_for(world["olga"])

    response = client.post(reverse("language_set"), {"language": "ja", "next": f"/orgs/{world['org'].pk}/"})
    page = text(client.get(f"/orgs/{world['org'].pk}/"))

    world["olga"].refresh_from_db()
    assert response["Location"] == f"/orgs/{world['org'].pk}/"
    assert world["olga"].language == "ja"
    assert "利用上限に達しました" in page
    assert "クレジット残高" in page
    assert "あと 5時間0分 でリセット · 2026年11月28日 17:00 (UTC)" in page
    assert "Free プランの Codex cloud tasks の利用上限に達しました。" in page


def test_japanese_yen_and_grouping(world):
    # the buy dialog offers the packs of the organization's billing currency: a plan in yen here
    yen_plan = Plan.objects.create(key="free-jpy", name="Free (JPY)", price_amount=0, currency="jpy")
    Subscription.objects.filter(organization=world["org"]).update(plan=yen_plan)
    client = client_for(world["olga"])
    client.post(reverse("language_set"), {"language": "ja", "next": "/"})

    html = client.get(reverse("org_overview", args=[world["org"].pk])).content.decode()

    assert "6,000円（税込）" in html
    assert "1,000 クレジット" in html


# Usage page, events, CSV ------------------------------------------------------------------------------


def test_usage_page_charts_from_rollups_with_a_table_of_the_same_numbers(world):
    # given usage on two days, rolled up
    record(world["org"], "codex.local_task", "3", at=NOW - timedelta(days=2))
    record(world["org"], "codex.local_task", "2")
    daily_usage_rollup(now=NOW + timedelta(minutes=5))

    # when the owner opens the usage page
    response = client_for(world["olga"]).get(reverse("org_usage", args=[world["org"].pk]))

    # then the chart is an SVG image with a title and a description, and the table has the numbers
    html = response.content.decode()
    assert (
        '<svg viewBox="0 0 560 210" role="img" aria-labelledby="chart-title-codexlocal_task chart-desc-codexlocal_task"'
        in html
    )
    assert '<title id="chart-title-codexlocal_task">Codex local tasks: usage per day, last 30 days</title>' in html
    assert (
        "Daily totals, not cumulative, from Oct 30, 2026 to Nov 28, 2026: 5 tasks in all, at most 3 on one day." in html
    )
    chart = next(c for c in response.context["charts"] if c["meter"].key == "codex.local_task")
    assert [(r.day, r.quantity) for r in chart["rows"] if r.quantity] == [
        (date(2026, 11, 26), Decimal("3")),
        (date(2026, 11, 28), Decimal("2")),
    ]
    assert '<th scope="row">Nov 26, 2026</th> <td class="num">3</td>' in re.sub(r"\s+", " ", html)


def test_event_log_shows_each_decision_with_its_breakdown(world):
    credits_grant(organization_id=world["org"].pk, credits=Decimal("30"), now=NOW, reason="test")
    record(world["org"], "codex.cloud_task", "2")
    record(world["org"], "codex.cloud_task", "1")  # 25 credits from the lot
    record(world["org"], "codex.cloud_task", "1")  # denied: 5 credits left

    response = client_for(world["olga"]).get(reverse("org_usage", args=[world["org"].pk]))

    events = response.context["events"]
    assert [(e.decision, e.quantity, e.from_allowance, e.credits_charged) for e in events] == [
        ("denied", Decimal("1"), Decimal("0"), Decimal("0")),
        ("allowed", Decimal("1"), Decimal("0"), Decimal("25")),
        ("allowed", Decimal("2"), Decimal("2"), Decimal("0")),
    ]
    page = text(response)
    assert "5 hours: 2 / 2 used, 0 left · resets Nov 28, 2026, 17:00" in page
    assert f"Lot #{events[1].lots[0][0]}: 25 credits" in page
    assert "You've reached your Free plan's usage limit for Codex cloud tasks." in page


def test_event_log_filters_by_meter_decision_and_date(world):
    record(world["org"], "codex.local_task", at=NOW - timedelta(days=3))
    record(world["org"], "codex.local_task")
    record(world["org"], "codex.cloud_task")
    client = client_for(world["olga"])
    url = reverse("org_usage", args=[world["org"].pk])

    by_meter = client.get(url, {"meter": "codex.local_task"}).context["events"]
    by_date = client.get(url, {"date_from": "2026-11-25", "date_to": "2026-11-25"}).context["events"]
    denied = client.get(url, {"decision": "denied"}).context["events"]

    assert [(e.meter_key, e.created_at) for e in by_meter] == [
        ("codex.local_task", NOW),
        ("codex.local_task", NOW - timedelta(days=3)),
    ]
    assert [(e.meter_key, e.created_at) for e in by_date] == [("codex.local_task", NOW - timedelta(days=3))]
    assert denied == []


def test_event_log_pages_with_a_cursor(world, settings):
    for _ in range(3):
        record(world["org"], "codex.local_task")
    ids = list(UsageEvent.objects.order_by("-created_at", "-id").values_list("id", flat=True))
    client = client_for(world["olga"])
    url = reverse("org_usage", args=[world["org"].pk])
    import usage.views.usage_page

    original = usage.views.usage_page.EVENTS_PER_PAGE
    usage.views.usage_page.EVENTS_PER_PAGE = 2
    try:
        first = client.get(url)
        second = client.get(url, {"before": first.context["older"]})
    finally:
        usage.views.usage_page.EVENTS_PER_PAGE = original

    assert [e.id for e in first.context["events"]] == ids[:2]
    assert [e.id for e in second.context["events"]] == ids[2:]
    assert second.context["older"] == ""


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ({"date_from": "yesterday"}, {"date_from": ["Enter a valid date."]}),
        ({"date_from": "2026-11-28", "date_to": "2026-11-01"}, {"date_to": ["The end date is before the start date."]}),
        ({"date_from": "1900-01-01"}, {"date_from": ["Enter a date between 2000 and 2999."]}),
        ({"meter": "no.such"}, {"meter": ["Select a valid choice. no.such is not one of the available choices."]}),
        ({"decision": "maybe"}, {"decision": ["Select a valid choice. maybe is not one of the available choices."]}),
    ],
)
def test_event_filters_show_field_errors(world, query, errors):
    response = client_for(world["olga"]).get(reverse("org_usage", args=[world["org"].pk]), query)

    assert response.status_code == 200
    assert response.context["form"].errors == errors
    assert "Correct the filters above to see events." in text(response)


@pytest.mark.parametrize("before", ["garbage", "1.2.3", "9" * 40 + ".1", "-1.5", "99999999999999999.1"])
def test_a_mangled_cursor_never_fails(world, before):
    record(world["org"], "codex.local_task")

    response = client_for(world["olga"]).get(reverse("org_usage", args=[world["org"].pk]), {"before": before})

    assert response.status_code == 200


def test_csv_export_has_one_row_per_event_with_exact_values(world):
    credits_grant(organization_id=world["org"].pk, credits=Decimal("30"), now=NOW, reason="test")
    first = record(world["org"], "codex.cloud_task", "2")
    second = record(world["org"], "codex.cloud_task", "1")
    usage_record(item=UsageInput(world["org"].pk, "codex.local_task", Decimal("1"), "=cmd|' /C calc'!A0"), now=NOW)

    response = client_for(world["olga"]).get(
        reverse("org_events_csv", args=[world["org"].pk]), {"meter": "codex.cloud_task"}
    )
    all_rows = client_for(world["olga"]).get(reverse("org_events_csv", args=[world["org"].pk]))

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        f'attachment; filename="usage-events-{world["org"].pk}-20261128-1200.csv"'
    )
    rows = list(csv.reader(io.StringIO(response.getvalue().decode())))
    stamp = "2026-11-28T12:00:00+00:00"
    assert rows == [
        [
            "id",
            "created_at",
            "occurred_at",
            "meter",
            "kind",
            "decision",
            "quantity",
            "from_allowance",
            "credits_charged",
            "idempotency_key",
            "error_code",
        ],
        [
            str(second.body["id"]),
            stamp,
            stamp,
            "codex.cloud_task",
            "usage",
            "allowed",
            "1",
            "0",
            "25",
            UsageEvent.objects.get(pk=second.body["id"]).idempotency_key,
            "",
        ],
        [
            str(first.body["id"]),
            stamp,
            stamp,
            "codex.cloud_task",
            "usage",
            "allowed",
            "2",
            "2",
            "0",
            UsageEvent.objects.get(pk=first.body["id"]).idempotency_key,
            "",
        ],
    ]
    everything = list(csv.reader(io.StringIO(all_rows.getvalue().decode())))
    assert everything[1][9] == "'=cmd|' /C calc'!A0"  # a formula stays text in spreadsheets


def test_csv_export_with_bad_filters_is_a_400(world):
    response = client_for(world["olga"]).get(reverse("org_events_csv", args=[world["org"].pk]), {"date_to": "soon"})

    assert response.status_code == 400
    assert response.content.decode() == "The filters are not valid: Enter a valid date."


# Credits and plans -------------------------------------------------------------------------------------


def test_credits_page_shows_balance_lots_and_history(world):
    credits_grant(
        organization_id=world["org"].pk,
        credits=Decimal("1234.5"),
        now=NOW,
        reason="Welcome",
        expires_at=NOW + timedelta(days=30),
    )
    record(world["org"], "codex.cloud_task", "3")  # 2 included, 25 credits

    response = client_for(world["olga"]).get(reverse("org_credits", args=[world["org"].pk]))

    page = text(response)
    assert "Credit balance 1,209.5 credits" in page
    assert "Grant Promotional 1,209.5 1,234.5 Dec 28, 2026, 12:00 (UTC) Welcome" in page
    assert [(e.kind, e.amount) for e in response.context["entries"]] == [
        ("consume", Decimal("-25")),
        ("grant", Decimal("1234.5")),
    ]
    assert "-25" in page and "+1,234.5" in page


def test_plans_page_shows_plans_side_by_side(world):
    response = client_for(world["olga"]).get(reverse("org_plans", args=[world["org"].pk]))

    page = text(response)
    assert [row["plan"].key for row in response.context["rows"]] == ["free", "plus", "pro"]
    assert "Free Current plan $0.00 per month" in page
    assert "Plus $20.00 per month" in page
    assert "45 tasks per 5 hours" in page and "1,500 tasks per 7 days" in page
    assert "Change to Plus" in page  # the change itself: tests/billing/test_views_plans.py


def test_purchase_link_from_the_api_goes_to_the_credits_page_for_members_only(world):
    url = f"/billing/credits/?organization={world['org'].pk}"

    member = client_for(world["mia"]).get(url)
    stranger = client_for(world["otto"]).get(url)
    junk = client_for(world["mia"]).get("/billing/credits/?organization=abc")

    assert member["Location"] == f"/orgs/{world['org'].pk}/credits/"
    assert stranger.status_code == 404
    assert junk["Location"] == "/"


# API keys -----------------------------------------------------------------------------------------------


def test_owner_creates_a_key_and_sees_the_secret_once(world):
    client = client_for(world["olga"])
    url = reverse("org_api_keys", args=[world["org"].pk])

    created = client.post(url, {"name": "CI runner"})
    again = client.get(url)

    key = ApiKey.objects.get(organization=world["org"])
    secret = created.context["secret"]
    assert key.name == "CI runner"
    assert secret.startswith(key.prefix) and len(secret) > 40
    assert f'value="{secret}"' in created.content.decode()
    assert secret not in again.content.decode()
    assert f"{key.prefix}…" in again.content.decode()


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", "This field is required."),
        ("   ", "This field is required."),
        ("x" * 101, "Ensure this value has at most 100 characters (it has 101)."),
    ],
)
def test_key_form_shows_errors(world, name, error):
    response = client_for(world["olga"]).post(reverse("org_api_keys", args=[world["org"].pk]), {"name": name})

    assert response.status_code == 400
    assert response.context["form"].errors == {"name": [error]}
    assert ApiKey.objects.count() == 0


def test_owner_revokes_a_key(world, frozen):
    key, _ = api_key_create(organization=world["org"], name="old")

    response = client_for(world["olga"]).post(reverse("org_api_key_revoke", args=[world["org"].pk, key.pk]))

    key.refresh_from_db()
    assert response.status_code == 302
    assert key.revoked_at == NOW


def test_members_cannot_create_or_revoke_keys(world):
    key, _ = api_key_create(organization=world["org"], name="old")
    client = client_for(world["mia"])

    page = client.get(reverse("org_api_keys", args=[world["org"].pk]))
    create = client.post(reverse("org_api_keys", args=[world["org"].pk]), {"name": "mine"})
    revoke = client.post(reverse("org_api_key_revoke", args=[world["org"].pk, key.pk]))

    key.refresh_from_db()
    assert "Only owners and admins can create or revoke keys." in text(page)
    assert (create.status_code, revoke.status_code) == (403, 403)
    assert (ApiKey.objects.count(), key.revoked_at) == (1, None)


def test_a_key_of_another_organization_cannot_be_revoked(world):
    key, _ = api_key_create(organization=world["other"], name="otto's")

    response = client_for(world["olga"]).post(reverse("org_api_key_revoke", args=[world["org"].pk, key.pk]))

    key.refresh_from_db()
    assert response.status_code == 404
    assert key.revoked_at is None


# Team ------------------------------------------------------------------------------------------------------


def test_inviting_a_new_email_creates_a_user_without_password_and_mails_a_set_password_link(world):
    response = client_for(world["olga"]).post(
        reverse("org_team_invite", args=[world["org"].pk]), {"email": "New@Example.com", "role": "admin"}
    )

    user = User.objects.get(email="new@example.com")
    assert response.status_code == 302
    assert Membership.objects.get(organization=world["org"], user=user).role == "admin"
    assert not user.has_usable_password()
    personal = Membership.objects.exclude(organization=world["org"]).get(user=user).organization
    assert (personal.is_personal, personal.subscription.plan.key) == (True, "free")
    assert [(m.to, m.subject) for m in mail.outbox] == [(["new@example.com"], "olga@example.com invited you to Olga")]
    found = re.search(r"http://testserver(/password-reset/[^/]+/[^/]+/)", str(mail.outbox[0].body))
    assert found is not None
    link = found.group(1)
    assert Client().get(link, follow=True).context["validlink"] is True


def test_inviting_an_existing_user_adds_a_membership(world):
    response = client_for(world["olga"]).post(
        reverse("org_team_invite", args=[world["org"].pk]), {"email": "otto@example.com", "role": "member"}
    )

    assert response.status_code == 302
    assert Membership.objects.get(organization=world["org"], user=world["otto"]).role == "member"
    assert "Log in to see it: http://testserver/login/" in mail.outbox[0].body


def test_an_invitation_is_written_in_the_language_its_reader_chose(world):
    User.objects.filter(pk=world["otto"].pk).update(language="ja")

    client_for(world["olga"]).post(
        reverse("org_team_invite", args=[world["org"].pk]), {"email": "otto@example.com", "role": "member"}
    )

    [message] = mail.outbox
    assert message.subject == "olga@example.com さんから Olga に招待されました"
    assert message.body.endswith("ログインしてご確認ください: http://testserver/login/")


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        ({"email": "nope", "role": "member"}, {"email": ["Enter a valid email address."]}),
        ({"email": "mia@example.com", "role": "member"}, {"email": ["mia@example.com is already a member."]}),
        (
            {"email": "z@example.com", "role": "king"},
            {"role": ["Select a valid choice. king is not one of the available choices."]},
        ),
    ],
)
def test_invite_form_shows_errors(world, data, errors):
    response = client_for(world["olga"]).post(reverse("org_team_invite", args=[world["org"].pk]), data)

    assert response.status_code == 400
    assert response.context["invite"].errors == errors
    assert mail.outbox == []


def test_members_cannot_manage_the_team(world):
    client = client_for(world["mia"])
    olga_membership = Membership.objects.get(organization=world["org"], user=world["olga"])

    page = client.get(reverse("org_team", args=[world["org"].pk]))
    invite = client.post(
        reverse("org_team_invite", args=[world["org"].pk]), {"email": "z@example.com", "role": "member"}
    )
    remove = client.post(reverse("org_team_remove", args=[world["org"].pk, olga_membership.pk]))

    assert "Invite someone" not in text(page)
    assert (invite.status_code, remove.status_code) == (403, 403)
    assert Membership.objects.filter(organization=world["org"]).count() == 2


def test_the_last_owner_cannot_be_demoted_or_removed(world):
    client = client_for(world["olga"])
    own = Membership.objects.get(organization=world["org"], user=world["olga"])

    demote = client.post(
        reverse("org_team_role", args=[world["org"].pk, own.pk]), {f"m{own.pk}-role": "member"}, follow=True
    )
    remove = client.post(reverse("org_team_remove", args=[world["org"].pk, own.pk]), follow=True)

    own.refresh_from_db()
    assert own.role == "owner"
    assert "An organization needs at least one owner." in text(demote)
    assert "An organization needs at least one owner." in text(remove)


def test_owner_changes_a_role_and_removes_a_member(world):
    client = client_for(world["olga"])
    mia = Membership.objects.get(organization=world["org"], user=world["mia"])

    client.post(reverse("org_team_role", args=[world["org"].pk, mia.pk]), {f"m{mia.pk}-role": "admin"})
    mia.refresh_from_db()
    role_after = mia.role
    client.post(reverse("org_team_remove", args=[world["org"].pk, mia.pk]))

    assert role_after == "admin"
    assert not Membership.objects.filter(pk=mia.pk).exists()


def test_an_admin_cannot_touch_an_owner_or_make_owners(world):
    membership_set(organization=world["org"], user=world["mia"], role=Role.ADMIN)
    client = client_for(world["mia"])
    olga = Membership.objects.get(organization=world["org"], user=world["olga"])

    demote = client.post(reverse("org_team_role", args=[world["org"].pk, olga.pk]), {f"m{olga.pk}-role": "member"})
    invite = client.post(
        reverse("org_team_invite", args=[world["org"].pk]), {"email": "z@example.com", "role": "owner"}
    )

    olga.refresh_from_db()
    assert demote.status_code == 403
    assert olga.role == "owner"
    assert invite.status_code == 400
    assert invite.context["invite"].errors == {
        "role": ["Select a valid choice. owner is not one of the available choices."]
    }


# Time zone and settings ----------------------------------------------------------------------------------------


def test_the_browser_time_zone_is_stored_once(world):
    client = client_for(world["olga"])

    page = client.get(reverse("org_overview", args=[world["org"].pk]))
    first = client.post(reverse("timezone_detected"), {"timezone": "Asia/Tokyo"})
    second = client.post(reverse("timezone_detected"), {"timezone": "Europe/Paris"})
    after = client.get(reverse("org_overview", args=[world["org"].pk]))

    world["olga"].refresh_from_db()
    assert 'data-timezone-url="/settings/timezone/"' in page.content.decode()
    assert first.json() == {"timezone": "Asia/Tokyo", "changed": True}
    assert second.json() == {"timezone": "Asia/Tokyo", "changed": False}
    assert world["olga"].timezone == "Asia/Tokyo"
    assert "data-timezone-url" not in after.content.decode()
    assert "Times are shown in Asia/Tokyo." in text(after)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "x" * 500])
def test_an_unknown_time_zone_is_refused(world, zone):
    response = client_for(world["olga"]).post(reverse("timezone_detected"), {"timezone": zone})

    world["olga"].refresh_from_db()
    assert response.status_code == 400
    assert world["olga"].timezone == "UTC"


def test_settings_form_saves_and_shows_errors(world):
    client = client_for(world["olga"])

    bad = client.post(reverse("settings"), {"name": "Olga", "timezone": "Nowhere", "language": "ja"})
    bad_errors = {name: [str(e) for e in errors] for name, errors in bad.context["form"].errors.items()}
    good = client.post(reverse("settings"), {"name": "Olga K", "timezone": "Europe/Paris", "language": "ja"})

    world["olga"].refresh_from_db()
    assert bad_errors == {"timezone": ["Select a valid choice. Nowhere is not one of the available choices."]}
    assert good["Location"] == "/settings/"
    assert (world["olga"].name, world["olga"].timezone, world["olga"].language) == ("Olga K", "Europe/Paris", "ja")


# Rollups (what the usage page reads) -------------------------------------------------------------------------------


def test_rollup_counts_each_event_once_however_often_it_runs(world):
    record(world["org"], "codex.local_task", "3", at=NOW - timedelta(days=1))
    record(world["org"], "codex.local_task", "2")
    record(world["org"], "codex.cloud_task", "5")  # denied: 2 per 5 hours, no credits

    first = daily_usage_rollup(now=NOW + timedelta(minutes=5))
    second = daily_usage_rollup(now=NOW + timedelta(minutes=6))

    rows = sorted(
        (r.meter.key, r.day, r.quantity, r.from_allowance, r.credits, r.events, r.denied)
        for r in DailyUsage.objects.filter(organization=world["org"])
    )
    assert (first, second) == (3, 0)
    assert rows == [
        ("codex.cloud_task", date(2026, 11, 28), Decimal("0"), Decimal("0"), Decimal("0"), 0, 1),
        ("codex.local_task", date(2026, 11, 27), Decimal("3"), Decimal("3"), Decimal("0"), 1, 0),
        ("codex.local_task", date(2026, 11, 28), Decimal("2"), Decimal("2"), Decimal("0"), 1, 0),
    ]


def test_rollup_waits_for_events_younger_than_the_lag_and_adds_later_ones(world):
    record(world["org"], "codex.local_task", "1")

    early = daily_usage_rollup(now=NOW + timedelta(seconds=30))
    record(world["org"], "codex.local_task", "4", at=NOW + timedelta(minutes=1))
    later = daily_usage_rollup(now=NOW + timedelta(minutes=10))

    row = DailyUsage.objects.get(organization=world["org"])
    assert (early, later) == (0, 2)
    assert (row.quantity, row.events) == (Decimal("5"), 2)


def test_rollup_uses_the_organization_time_zone_for_days(world):
    world["org"].timezone = "Asia/Tokyo"
    world["org"].save()
    record(
        world["org"], "codex.local_task", "1", at=datetime(2026, 11, 28, 16, 0, tzinfo=UTC)
    )  # 01:00 on the 29th in Tokyo

    daily_usage_rollup(now=datetime(2026, 11, 28, 17, 0, tzinfo=UTC))

    assert list(DailyUsage.objects.values_list("day", flat=True)) == [date(2026, 11, 29)]


def test_rollup_in_small_chunks_gives_the_same_totals(world):
    for _ in range(5):
        record(world["org"], "codex.local_task", "1")

    counted = daily_usage_rollup(now=NOW + timedelta(minutes=5), chunk=2)

    row = DailyUsage.objects.get(organization=world["org"])
    assert counted == 5
    assert (row.quantity, row.events) == (Decimal("5"), 5)


def test_the_chart_adds_events_the_rollup_has_not_reached_yet_without_counting_twice(world):
    # given one event rolled up, then two more that the rollup has not read yet (one of them denied)
    record(world["org"], "codex.cloud_task", "1", at=NOW - timedelta(minutes=10))
    daily_usage_rollup(now=NOW)
    record(world["org"], "codex.cloud_task", "1")
    record(world["org"], "codex.cloud_task", "5")

    # when the owner opens the usage page
    response = client_for(world["olga"]).get(reverse("org_usage", args=[world["org"].pk]))

    # then today holds all three decisions once
    chart = next(c for c in response.context["charts"] if c["meter"].key == "codex.cloud_task")
    today = chart["rows"][-1]
    assert (today.day, today.quantity, today.from_allowance, today.events, today.denied) == (
        date(2026, 11, 28),
        Decimal("2"),
        Decimal("2"),
        2,
        1,
    )


def test_a_poll_after_the_session_ended_moves_the_page_to_the_login(world):
    response = Client().get(reverse("org_overview_live", args=[world["org"].pk]), HTTP_HX_REQUEST="true")

    assert response.status_code == 204
    assert response["HX-Redirect"] == "/login/"


def test_overview_reads_no_events_and_its_queries_do_not_grow_with_them(world):
    client = client_for(world["olga"])
    url = reverse("org_overview", args=[world["org"].pk])
    client.get(url)  # the session's current organization is stored once

    def queries() -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return [q["sql"] for q in captured.captured_queries]

    record(world["org"], "codex.local_task")
    few = queries()
    for _ in range(20):
        record(world["org"], "codex.local_task")
    many = queries()

    assert len(few) == len(many)
    assert [sql for sql in many if "usage_usageevent" in sql] == []
