"""Which emails each person gets: the category of every notice kind, each role's defaults and limits,
saving choices, the recipients the senders ask for, and the Notifications page."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import translation

from accounts.models import Membership, NotificationCategory, NotificationPreference, Organization, Role, User
from accounts.notifications import (
    CATEGORY_BY_KIND,
    Recipient,
    categories_offered,
    category_for_kind,
    category_locked,
    emails_by_reader,
    receives,
)
from accounts.selectors import notification_choices, notification_recipients, notification_recipients_with_language
from accounts.services import notification_preferences_set, organization_create
from billing.models import BillingNoticeKind
from core.errors import DomainError
from tests.factories import T0, UserFactory
from usage.models import NoticeKind

pytestmark = pytest.mark.django_db

C = NotificationCategory
ALL = list(NotificationCategory)
USAGE = [C.USAGE_ALERTS, C.ALLOWANCE_RESETS]
PAYMENT = [C.RECEIPTS, C.AUTO_TOPUP, C.RENEWALS, C.PAYMENT_PROBLEMS]


# The category of every kind ------------------------------------------------------------------------


def test_every_notice_kind_has_a_category_and_no_category_is_left_empty():
    kinds = [*NoticeKind.values, *BillingNoticeKind.values]
    # the two apps' kinds never share a value (the table is keyed by value)
    assert len(set(kinds)) == len(kinds)
    # every kind has a category, and the table names no kind that does not exist
    assert {kind: category_for_kind(kind) in ALL for kind in kinds} == dict.fromkeys(kinds, True)
    assert set(CATEGORY_BY_KIND) == set(kinds)
    # every category offered on the page has an email behind it
    assert {category_for_kind(kind) for kind in kinds} == set(ALL)


def test_kinds_map_to_the_categories_people_choose():
    assert {kind: str(category_for_kind(kind)) for kind in sorted(CATEGORY_BY_KIND)} == {
        "allowance_reset": "allowance_resets",
        "credits_depleted": "credit_balance",
        "credits_low": "credit_balance",
        "plan_downgraded": "payment_problems",
        "plan_started": "receipts",
        "renewal_failed": "payment_problems",
        "renewal_succeeded": "renewals",
        "topup_disabled": "payment_problems",
        "topup_failed": "payment_problems",
        "topup_succeeded": "auto_topup",
        "window_threshold": "usage_alerts",
    }


def test_an_unmapped_kind_has_no_category_rather_than_a_default():
    # (the senders set its notices aside; the test above fails when a kind of ours is unmapped)
    assert category_for_kind("something_new") is None


# Roles ----------------------------------------------------------------------------------------------


def test_what_each_role_is_offered_and_what_is_locked():
    assert categories_offered(Role.OWNER) == ALL
    assert categories_offered(Role.ADMIN) == ALL
    assert categories_offered(Role.MEMBER) == USAGE
    assert [c for c in ALL if category_locked(Role.OWNER, c)] == PAYMENT
    assert [c for c in ALL if category_locked(Role.ADMIN, c)] == []
    assert [c for c in ALL if category_locked(Role.MEMBER, c)] == []


@pytest.mark.parametrize(
    ("role", "choice", "expected"),
    [
        # without a saved choice: owners and admins get everything, members nothing
        (Role.OWNER, None, dict.fromkeys(ALL, True)),
        (Role.ADMIN, None, dict.fromkeys(ALL, True)),
        (Role.MEMBER, None, dict.fromkeys(ALL, False)),
        # everything turned off: owners still get payment emails, members cannot get billing ones at all
        (Role.OWNER, False, {c: c in PAYMENT for c in ALL}),
        (Role.ADMIN, False, dict.fromkeys(ALL, False)),
        (Role.MEMBER, False, dict.fromkeys(ALL, False)),
        # everything turned on: a member gets only the usage categories
        (Role.MEMBER, True, {c: c in USAGE for c in ALL}),
    ],
)
def test_receives_honours_role_default_and_choice(role, choice, expected):
    assert {c: receives(role=role, category=c, choice=choice) for c in ALL} == expected


# Saving and reading ----------------------------------------------------------------------------------


@pytest.fixture
def team():
    """Acme: owner Olga, admin Ada, member Mia, and an admin whose account is deactivated."""
    olga = UserFactory(email="olga@example.com")
    org = organization_create(name="Acme", owner=olga)
    ada, mia, gone = (
        UserFactory(email="ada@example.com"),
        UserFactory(email="mia@example.com"),
        UserFactory(email="gone@example.com", is_active=False),
    )
    Membership.objects.create(organization=org, user=ada, role=Role.ADMIN)
    Membership.objects.create(organization=org, user=mia, role=Role.MEMBER)
    Membership.objects.create(organization=org, user=gone, role=Role.ADMIN)
    return {"org": org, "olga": olga, "ada": ada, "mia": mia, "gone": gone, **memberships(org)}


def memberships(org: Organization) -> dict[str, Membership]:
    return {m.user.email.split("@")[0] + "_m": m for m in org.memberships.select_related("user")}


def saved(membership: Membership) -> dict[str, bool]:
    return dict(membership.notification_preferences.order_by("category").values_list("category", "enabled"))


def test_saving_stores_one_row_per_category_and_a_second_save_updates_it(team):
    ada = team["ada_m"]
    notification_preferences_set(membership=ada, choices={"usage_alerts": False, "receipts": True}, now=T0)
    notification_preferences_set(membership=ada, choices={"usage_alerts": True, "credit_balance": False}, now=T0)

    assert saved(ada) == {"credit_balance": False, "receipts": True, "usage_alerts": True}
    assert NotificationPreference.objects.filter(membership=ada).count() == 3


@pytest.mark.parametrize(
    ("who", "choices"),
    [
        ("mia_m", {"usage_alerts": True, "receipts": True}),  # a member and a billing category
        ("mia_m", {"credit_balance": True}),
        ("olga_m", {"usage_alerts": False, "payment_problems": False}),  # an owner and a payment category
        ("ada_m", {"no_such_category": True}),
    ],
)
def test_a_category_the_role_cannot_change_is_refused_and_nothing_is_saved(team, who, choices):
    with pytest.raises(DomainError) as error:
        notification_preferences_set(membership=team[who], choices=choices, now=T0)

    assert (error.value.code, error.value.status) == ("notification_not_editable", 403)
    assert NotificationPreference.objects.count() == 0


def test_choices_show_the_role_defaults_then_what_was_saved(team):
    assert notification_choices(membership=team["mia_m"]) == {
        C.USAGE_ALERTS: (False, False),
        C.ALLOWANCE_RESETS: (False, False),
    }
    assert notification_choices(membership=team["olga_m"]) == {c: (True, c in PAYMENT) for c in ALL}

    notification_preferences_set(membership=team["mia_m"], choices={"allowance_resets": True}, now=T0)
    notification_preferences_set(membership=team["olga_m"], choices={"usage_alerts": False}, now=T0)

    assert notification_choices(membership=team["mia_m"]) == {
        C.USAGE_ALERTS: (False, False),
        C.ALLOWANCE_RESETS: (True, False),
    }
    assert notification_choices(membership=team["olga_m"]) == {c: (c != C.USAGE_ALERTS, c in PAYMENT) for c in ALL}


# Recipients (what the senders ask) --------------------------------------------------------------------


def test_recipients_by_default_are_the_active_owners_and_admins(team):
    org = team["org"].pk

    recipients = notification_recipients(organization_ids=[org], categories=ALL)

    assert recipients == {(org, str(c)): ["olga@example.com", "ada@example.com"] for c in ALL}


def test_recipients_honour_saved_choices_and_roles(team):
    org = team["org"].pk
    # Ada (admin) turns off usage alerts and receipts; Mia (member) opts in to allowance resets
    notification_preferences_set(membership=team["ada_m"], choices={"usage_alerts": False, "receipts": False}, now=T0)
    notification_preferences_set(membership=team["mia_m"], choices={"allowance_resets": True}, now=T0)
    # rows no form can write (an owner's locked category, a member's billing one, e.g. after a role change)
    NotificationPreference.objects.create(membership=team["olga_m"], category=C.RECEIPTS, enabled=False, updated_at=T0)
    NotificationPreference.objects.create(membership=team["mia_m"], category=C.RENEWALS, enabled=True, updated_at=T0)

    recipients = notification_recipients(organization_ids=[org], categories=ALL)

    both = ["olga@example.com", "ada@example.com"]
    assert recipients == {
        (org, "usage_alerts"): ["olga@example.com"],
        (org, "allowance_resets"): [*both, "mia@example.com"],
        (org, "credit_balance"): both,
        (org, "receipts"): ["olga@example.com"],
        (org, "auto_topup"): both,
        (org, "renewals"): both,
        (org, "payment_problems"): both,
    }


def test_recipients_of_a_category_nobody_wants_are_absent(team):
    org = team["org"].pk
    Membership.objects.filter(organization=team["org"]).exclude(user=team["olga"]).delete()
    notification_preferences_set(membership=team["olga_m"], choices={"credit_balance": False}, now=T0)

    assert notification_recipients(organization_ids=[org], categories=["credit_balance", "receipts"]) == {
        (org, "receipts"): ["olga@example.com"]
    }
    assert notification_recipients(organization_ids=[org], categories=[]) == {}


def test_recipients_take_one_query_for_any_number_of_organizations_and_categories(team):
    orgs = [team["org"].pk]
    for i in range(5):
        owner = UserFactory(email=f"owner{i}@example.com")
        org = organization_create(name=f"Org {i}", owner=owner)
        member = Membership.objects.create(organization=org, user=UserFactory(), role=Role.MEMBER)
        notification_preferences_set(membership=member, choices={"usage_alerts": True}, now=T0)
        orgs.append(org.pk)

    with CaptureQueriesContext(connection) as queries:
        recipients = notification_recipients(organization_ids=orgs, categories=ALL)

    assert len(queries.captured_queries) == 1
    assert len(recipients[(orgs[3], "usage_alerts")]) == 2  # the owner and the member who opted in
    assert recipients[(orgs[3], "receipts")] == ["owner2@example.com"]


def test_recipients_come_with_the_language_and_time_zone_to_write_to_them_in(team, settings):
    org = team["org"].pk
    # Olga chose Japanese, Ada English; Mia (opted in) chose nothing, and a fourth person a language not offered
    User.objects.filter(pk=team["olga"].pk).update(language="ja", timezone="Asia/Tokyo")
    User.objects.filter(pk=team["ada"].pk).update(language="en", timezone="UTC")
    # Mia has no time zone stored, Zoe one this system does not know
    User.objects.filter(pk=team["mia"].pk).update(timezone="")
    notification_preferences_set(membership=team["mia_m"], choices={"allowance_resets": True}, now=T0)
    zoe = UserFactory(email="zoe@example.com", language="fr", timezone="Mars/Olympus_Mons")
    Membership.objects.create(organization=team["org"], user=zoe, role=Role.ADMIN)

    with CaptureQueriesContext(connection) as queries:
        recipients = notification_recipients_with_language(organization_ids=[org], categories=["allowance_resets"])

    # Then without a language we offer, a person gets the site's (settings.LANGUAGE_CODE), and without a
    # time zone we know, the site's (settings.TIME_ZONE)
    assert len(queries.captured_queries) == 1
    assert recipients == {
        (org, "allowance_resets"): [
            Recipient("olga@example.com", "ja", "Asia/Tokyo"),
            Recipient("ada@example.com", "en", "UTC"),
            Recipient("mia@example.com", "en", "UTC"),
            Recipient("zoe@example.com", "en", "UTC"),
        ]
    }
    assert emails_by_reader(recipients[(org, "allowance_resets")]) == {
        ("ja", "Asia/Tokyo"): ["olga@example.com"],
        ("en", "UTC"): ["ada@example.com", "mia@example.com", "zoe@example.com"],
    }
    # and when the site's language is Japanese and its zone Europe/Paris, those two get them
    settings.LANGUAGE_CODE = "ja"
    settings.TIME_ZONE = "Europe/Paris"
    again = notification_recipients_with_language(organization_ids=[org], categories=["allowance_resets"])
    assert [(r.language, r.timezone) for r in again[(org, "allowance_resets")]] == [
        ("ja", "Asia/Tokyo"),
        ("en", "UTC"),
        ("ja", "Europe/Paris"),
        ("ja", "Europe/Paris"),
    ]
    assert emails_by_reader(again[(org, "allowance_resets")]) == {
        ("ja", "Asia/Tokyo"): ["olga@example.com"],
        ("en", "UTC"): ["ada@example.com"],
        ("ja", "Europe/Paris"): ["mia@example.com", "zoe@example.com"],
    }


# The page ----------------------------------------------------------------------------------------------


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_url(org: Organization) -> str:
    return reverse("org_notifications", args=[org.pk])


def checkboxes(html: str) -> dict[str, str]:
    """name -> the checkbox's other attributes (checked, disabled), in page order."""
    found = {}
    for tag, name in re.findall(r'(<input type="checkbox" name="([^"]+)"[^>]*>)', html):
        found[name] = " ".join(a for a in ("checked", "disabled") if re.search(rf"\s{a}[\s>]", tag))
    return found


def test_the_page_is_404_for_another_organization_and_asks_visitors_to_log_in(team):
    otto = UserFactory(email="otto@example.com")
    organization_create(name="Otto's", owner=otto)

    assert client_for(otto).get(page_url(team["org"])).status_code == 404
    assert client_for(otto).post(page_url(team["org"]), {"usage_alerts": "on"}).status_code == 404
    assert NotificationPreference.objects.count() == 0
    anonymous = Client().get(page_url(team["org"]))
    assert (anonymous.status_code, anonymous["Location"]) == (302, f"/login/?next={page_url(team['org'])}")


def test_a_member_sees_only_the_usage_categories(team):
    response = client_for(team["mia"]).get(page_url(team["org"]))

    html = response.content.decode()
    assert response.status_code == 200
    assert checkboxes(html) == {"usage_alerts": "", "allowance_resets": ""}
    assert "<legend>Usage and credits</legend>" in html
    assert "Billing and payments" not in html
    assert "Purchases and receipts" not in html
    assert "Emails about credits, billing and payments go to owners and admins." in html


def test_an_owner_sees_payment_emails_ticked_and_disabled_with_the_reason(team):
    response = client_for(team["olga"]).get(page_url(team["org"]))

    html = response.content.decode()
    assert checkboxes(html) == {
        "usage_alerts": "checked",
        "allowance_resets": "checked",
        "credit_balance": "checked",
        "receipts": "checked disabled",
        "auto_topup": "checked disabled",
        "renewals": "checked disabled",
        "payment_problems": "checked disabled",
    }
    assert html.count("Owners always receive payment emails.") == 4
    # the reason is read out with the checkbox
    assert 'aria-describedby="id_receipts_helptext id_receipts_locked"' in html
    assert '<p class="help" id="id_receipts_locked">Owners always receive payment emails.</p>' in html
    assert 'aria-describedby="id_usage_alerts_helptext"' in html
    # the page is in the navigation, marked as the current one
    assert f'<a href="{page_url(team["org"])}" aria-current="page">Notifications</a>' in html
    # and the status region is there, empty, from the start
    assert '<p id="notifications-status" class="saved-status" role="status"></p>' in html


def test_an_admin_may_turn_off_every_category(team):
    html = client_for(team["ada"]).get(page_url(team["org"])).content.decode()

    assert checkboxes(html) == dict.fromkeys([str(c) for c in ALL], "checked")


def test_saving_the_form_round_trips(team):
    client = client_for(team["olga"])
    # the owner unticks usage alerts and keeps the rest (unticked boxes are not posted)
    response = client.post(page_url(team["org"]), {"allowance_resets": "on", "credit_balance": "on"})

    assert (response.status_code, response["Location"]) == (302, page_url(team["org"]))
    assert saved(team["olga_m"]) == {"allowance_resets": True, "credit_balance": True, "usage_alerts": False}
    page = client.get(response["Location"]).content.decode()
    saved_message = '<li class="flash-success">Your notification settings are saved.</li>'
    assert re.search(rf'<div role="status">\s*<ul class="flash">\s*{saved_message}', page)
    assert "Your notification settings are saved." in page
    assert checkboxes(page)["usage_alerts"] == ""
    assert checkboxes(page)["allowance_resets"] == "checked"


def test_a_forged_post_cannot_turn_off_an_owners_payment_emails(team):
    client = client_for(team["olga"])
    # nothing ticked, and explicit "off" values for the locked categories
    response = client.post(page_url(team["org"]), {"receipts": "", "payment_problems": "false"})

    assert response.status_code == 302
    assert saved(team["olga_m"]) == {"allowance_resets": False, "credit_balance": False, "usage_alerts": False}
    recipients = notification_recipients(organization_ids=[team["org"].pk], categories=PAYMENT)
    assert [recipients[(team["org"].pk, str(c))][0] for c in PAYMENT] == ["olga@example.com"] * 4


def test_a_forged_post_cannot_give_a_member_billing_emails(team):
    client = client_for(team["mia"])
    response = client.post(
        page_url(team["org"]),
        {"usage_alerts": "on", "receipts": "on", "payment_problems": "on", "credit_balance": "on"},
    )

    assert response.status_code == 302
    assert saved(team["mia_m"]) == {"allowance_resets": False, "usage_alerts": True}
    recipients = notification_recipients(organization_ids=[team["org"].pk], categories=ALL)
    assert [c for c in ALL if "mia@example.com" in recipients.get((team["org"].pk, str(c)), [])] == [C.USAGE_ALERTS]


def test_saving_with_htmx_swaps_the_form_and_fills_the_status_region(team):
    client = client_for(team["mia"])

    response = client.post(page_url(team["org"]), {"allowance_resets": "on"}, headers={"HX-Request": "true"})

    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="notifications-form"')
    assert "<nav" not in html  # the form only, not the whole page
    assert checkboxes(html) == {"usage_alerts": "", "allowance_resets": "checked"}
    assert '<p hx-swap-oob="innerHTML:#notifications-status">Your notification settings are saved.</p>' in html
    assert saved(team["mia_m"]) == {"allowance_resets": True, "usage_alerts": False}


def test_the_page_is_translated_to_japanese(team):
    client = client_for(team["olga"])
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "ja"

    with translation.override(settings.LANGUAGE_CODE):  # the request activates ja; do not leak it to later tests
        html = client.get(page_url(team["org"])).content.decode()

    assert "<h1>通知</h1>" in html
    assert "<legend>請求と支払い</legend>" in html
    assert "オーナーには支払いに関するメールが常に届きます。" in html
    assert "Owners always receive" not in html
