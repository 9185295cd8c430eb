"""The 402 message, by plan and role, with the time the blocking windows clear."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Membership, Role, User
from billing.services import credits_grant, spend_cap_set
from plans.models import Overage, WindowKind
from tests.factories import T0, AllowanceFactory, MeterFactory, PlanFactory, make_org
from tests.usage.engine_support import D, item, use
from usage.messages import limit_reached_message, spend_cap_message
from usage.services import usage_authorize, usage_record_batch

pytestmark = pytest.mark.django_db

H = timedelta(hours=1)
HEAD = "You've reached your {plan} plan's usage limit for Local tasks."
PERIOD_RESET = " It resets at 2026-02-15 12:00 UTC."
UPGRADE = " Upgrade to a paid plan for more usage."
ASK_UPGRADE = " Ask an owner to upgrade the plan."
BUY = " Buy credits to keep working now."
ASK_BUY = " Ask an owner of your organization to buy credits."
BLOCKED_MANAGER = " Upgrade your plan for more."
BLOCKED_MEMBER = " Ask an owner to upgrade the plan."


def person(email: str) -> User:
    """A user without a password (no slow hashing)."""
    return User.objects.create_user(email=email)


def org_on(*, plan_name="Plus", price=2000, overage=Overage.CREDITS):
    """An organization with an owner, an admin and a member, on a plan with 2 Local tasks per period."""
    meter = MeterFactory(name="Local tasks")
    allowance = AllowanceFactory(
        plan=PlanFactory(name=plan_name, price_amount=price), meter=meter, limit=D(2), overage=overage
    )
    people = {role: person(f"{role}@example.com") for role in (Role.OWNER, Role.ADMIN, Role.MEMBER)}
    org = make_org(plan=allowance.plan, owner=people[Role.OWNER])
    Membership.objects.create(organization=org, user=people[Role.ADMIN], role=Role.ADMIN)
    Membership.objects.create(organization=org, user=people[Role.MEMBER], role=Role.MEMBER)
    return org, meter, people


def deny(org, meter, *, user=None, key="k", quantity="3"):
    out = use(org, meter, quantity, key, now=T0, user_id=None if user is None else user.pk)
    assert out.status == 402
    return out.body["error"]


@pytest.mark.parametrize(
    ("who", "role", "tail"),
    [
        (None, "owner", UPGRADE),  # no user named: worded for whoever manages billing
        (Role.OWNER, "owner", UPGRADE),
        (Role.ADMIN, "admin", UPGRADE),
        (Role.MEMBER, "member", ASK_UPGRADE),
    ],
)
def test_free_plan_is_told_to_upgrade(who, role, tail):
    org, meter, people = org_on(plan_name="Free", price=0)
    error = deny(org, meter, user=people.get(who))
    assert error == {
        "code": "limit_reached",
        "message": HEAD.format(plan="Free") + PERIOD_RESET + tail,
        "resets_at": "2026-02-15T12:00:00+00:00",
        "purchase_url": f"http://127.0.0.1:8000/billing/credits/?organization={org.pk}",
        "role": role,
    }


def test_free_plan_with_too_few_credits_is_still_told_to_upgrade():
    org, meter, people = org_on(plan_name="Free", price=0)
    credits_grant(organization_id=org.pk, credits=D(4), now=T0)  # one more unit costs 5
    assert deny(org, meter)["message"] == HEAD.format(plan="Free") + PERIOD_RESET + UPGRADE


@pytest.mark.parametrize(
    ("who", "role", "tail"),
    [
        (None, "owner", BUY),
        (Role.OWNER, "owner", BUY),
        (Role.ADMIN, "admin", BUY),
        (Role.MEMBER, "member", ASK_BUY),
    ],
)
def test_paid_plan_offers_credits_to_owners_and_admins_and_tells_members_to_ask(who, role, tail):
    org, meter, people = org_on()
    error = deny(org, meter, user=people.get(who))
    assert (error["code"], error["role"]) == ("limit_reached", role)
    assert error["message"] == HEAD.format(plan="Plus") + PERIOD_RESET + tail


def test_a_user_who_is_not_a_member_is_worded_for_as_a_member():
    org, meter, _ = org_on()
    stranger = person("stranger@example.com")
    error = deny(org, meter, user=stranger)
    assert (error["role"], error["message"]) == ("member", HEAD.format(plan="Plus") + PERIOD_RESET + ASK_BUY)


@pytest.mark.parametrize(
    ("who", "tail"),
    [(Role.OWNER, BLOCKED_MANAGER), (Role.ADMIN, BLOCKED_MANAGER), (Role.MEMBER, BLOCKED_MEMBER)],
)
def test_plan_that_blocks_credits_does_not_offer_them(who, tail):
    org, meter, people = org_on(overage=Overage.BLOCK)
    credits_grant(organization_id=org.pk, credits=D(100), now=T0)
    error = deny(org, meter, user=people[who])
    assert error["message"] == HEAD.format(plan="Plus") + PERIOD_RESET + tail


def test_the_message_is_stored_and_replayed_with_its_role():
    org, meter, people = org_on()
    first = use(org, meter, "3", "k", now=T0, user_id=people[Role.MEMBER].pk)
    # Credits arrive and the member is promoted: the replay is still the stored answer
    credits_grant(organization_id=org.pk, credits=D(100), now=T0 + H)
    Membership.objects.filter(user=people[Role.MEMBER]).update(role=Role.OWNER)
    again = use(org, meter, "3", "k", now=T0 + H, user_id=people[Role.MEMBER].pk)
    assert (again.status, again.body) == (402, first.body)
    assert again.body["error"]["message"].endswith(ASK_BUY)


def test_authorize_words_its_denial_the_same_way():
    org, meter, people = org_on()
    out = usage_authorize(
        organization_id=org.pk, meter=meter.key, quantity=D(3), now=T0, user_id=people[Role.MEMBER].pk
    )
    assert out.body["allowed"] is False
    assert out.body["error"]["message"] == HEAD.format(plan="Plus") + PERIOD_RESET + ASK_BUY


# resets_at: when the windows that block clear -------------------------------------------------


def five_hours_and_seven_days():
    meter = MeterFactory(name="Local tasks")
    plan = PlanFactory(name="Plus")
    AllowanceFactory(plan=plan, meter=meter, limit=D(5), window_kind=WindowKind.ROLLING, window_seconds=5 * 3600)
    AllowanceFactory(plan=plan, meter=meter, limit=D(8), window_kind=WindowKind.ROLLING, window_seconds=7 * 86400)
    return make_org(plan=plan), meter


def test_resets_at_is_the_end_of_the_only_blocking_window():
    org, meter = five_hours_and_seven_days()
    use(org, meter, "5", "k1", now=T0)
    out = use(org, meter, "1", "k2", now=T0 + H)
    assert out.body["error"]["resets_at"] == "2026-01-15T17:00:00+00:00"
    assert out.body["error"]["message"] == HEAD.format(plan="Plus") + " It resets at 2026-01-15 17:00 UTC." + BUY


def test_resets_at_is_the_latest_end_when_several_windows_block():
    org, meter = five_hours_and_seven_days()
    use(org, meter, "5", "k1", now=T0)
    use(org, meter, "3", "k2", now=T0 + 5 * H)  # 7 days now full, second 5-hour window has 2 left
    out = use(org, meter, "3", "k3", now=T0 + 6 * H)
    # Both block 3 (2 left in 5 hours, 0 in 7 days): clear when the 7 days end
    assert out.body["error"]["resets_at"] == "2026-01-22T12:00:00+00:00"
    out = use(org, meter, "1", "k4", now=T0 + 6 * H)
    # 1 fits the 5-hour window; only the 7 days block
    assert out.body["error"]["resets_at"] == "2026-01-22T12:00:00+00:00"


def test_no_window_means_no_reset_time():
    org, meter, _ = org_on()
    other = MeterFactory(name="Cloud tasks", credits_per_unit=D(25))
    out = use(org, other, "1", "k1", now=T0)
    assert out.body["error"]["resets_at"] is None
    assert out.body["error"]["message"] == "You've reached your Plus plan's usage limit for Cloud tasks." + BUY


# Spend cap -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "tail"),
    [
        (Role.OWNER, " Raise the cap in billing settings, or wait until 2026-02-01 00:00 UTC."),
        (Role.ADMIN, " Raise the cap in billing settings, or wait until 2026-02-01 00:00 UTC."),
        (Role.MEMBER, " Ask an owner to raise the cap, or wait until 2026-02-01 00:00 UTC."),
    ],
)
def test_spend_cap_is_worded_for_owner_and_member(who, tail):
    org, meter, people = org_on()
    credits_grant(organization_id=org.pk, credits=D(100), now=T0)
    spend_cap_set(organization_id=org.pk, cap=D("7.5"), now=T0)
    error = deny(org, meter, user=people[who], quantity="4")  # 2 included + 10 credits
    assert error["code"] == "spend_cap_reached"
    assert error["resets_at"] == "2026-02-01T00:00:00+00:00"
    assert error["message"] == "Your organization has reached its monthly credit spend cap of 7.5 credits." + tail


def test_spend_cap_in_december_resets_in_january():
    org, meter, _ = org_on()
    credits_grant(organization_id=org.pk, credits=D(100), now=T0)
    spend_cap_set(organization_id=org.pk, cap=D(0), now=T0)
    out = use(org, meter, "3", "k", now=datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert out.body["error"]["resets_at"] == "2027-01-01T00:00:00+00:00"


def test_message_functions_directly():
    at = datetime(2026, 3, 1, 9, 5, tzinfo=UTC)
    assert (
        limit_reached_message(
            meter_name="Video seconds",
            plan_name="Pro",
            plan_is_free=False,
            role="member",
            resets_at=None,
            credits_blocked=False,
        )
        == "You've reached your Pro plan's usage limit for Video seconds."
        " Ask an owner of your organization to buy credits."
    )
    assert spend_cap_message(cap="100", role="owner", resets_at=at) == (
        "Your organization has reached its monthly credit spend cap of 100 credits."
        " Raise the cap in billing settings, or wait until 2026-03-01 09:05 UTC."
    )


def test_a_batch_of_denials_looks_each_callers_role_up_once():
    # Given a batch of 20 denied events from two people (each role lookup runs under the lock)
    org, meter, people = org_on()
    member, admin = people[Role.MEMBER].pk, people[Role.ADMIN].pk
    batch = [item(org, meter, "3", f"k{i}", user_id=member if i % 2 else admin) for i in range(20)]
    with CaptureQueriesContext(connection) as ctx:
        outcomes = usage_record_batch(items=batch, now=T0)
    # Then every one is worded for its caller's role, and each role was read once
    assert [o.body["error"]["role"] for o in outcomes] == ["admin", "member"] * 10
    assert sum("accounts_membership" in q["sql"] for q in ctx.captured_queries) == 2
