"""Billing emails: each goes, once, to the people who get its category (accounts' notification
preferences): owners always get payment emails, admins unless they opted out, members never."""

from __future__ import annotations

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Membership, Role, User
from accounts.services import notification_preferences_set, organization_create
from billing.models import BillingNotice, BillingNoticeKind
from billing.services.notices import billing_notice_add, billing_notices_send
from tests.factories import T0

pytestmark = pytest.mark.django_db

K = BillingNoticeKind


@pytest.fixture(autouse=True)
def _locmem(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def team(suffix: str = ""):
    """Owner Olga, admin Ada, member Mia (in that order), and an admin whose account is deactivated."""
    org = organization_create(name="Acme", owner=User.objects.create_user(email=f"olga{suffix}@example.com"))
    people = {}
    for name, role, active in (("ada", Role.ADMIN, True), ("mia", Role.MEMBER, True), ("gone", Role.ADMIN, False)):
        user = User.objects.create_user(email=f"{name}{suffix}@example.com", is_active=active)
        people[name] = Membership.objects.create(organization=org, user=user, role=role)
    people["olga"] = org.memberships.get(role=Role.OWNER)
    return org, people


def add(org, kinds, *, tag: str = "n") -> None:
    for i, kind in enumerate(kinds):
        billing_notice_add(
            organization_id=org.pk, kind=kind, dedupe_key=f"{tag}:{i}", subject=f"{kind} {i}", body="...", now=T0
        )


def test_by_default_every_billing_email_goes_to_the_active_owners_and_admins():
    org, _ = team()
    add(org, K.values)

    assert billing_notices_send(now=T0) == len(K.values)

    assert [(m.subject, m.to) for m in mail.outbox] == [
        (f"{kind} {i}", ["olga@example.com", "ada@example.com"]) for i, kind in enumerate(K.values)
    ]


def test_an_admin_who_opted_out_is_left_out_but_owners_always_get_payment_emails():
    org, people = team()
    # Ada turns off receipts and payment problems; Olga turns off what she may (none of these kinds)
    notification_preferences_set(
        membership=people["ada"], choices={"receipts": False, "payment_problems": False}, now=T0
    )
    notification_preferences_set(membership=people["olga"], choices={"credit_balance": False}, now=T0)
    # a member who opted in to every usage email still gets no billing email
    notification_preferences_set(
        membership=people["mia"], choices={"usage_alerts": True, "allowance_resets": True}, now=T0
    )
    add(org, [K.PLAN_STARTED, K.TOPUP_SUCCEEDED, K.RENEWAL_SUCCEEDED, K.RENEWAL_FAILED, K.TOPUP_DISABLED])

    assert billing_notices_send(now=T0) == 5

    owner, managers = ["olga@example.com"], ["olga@example.com", "ada@example.com"]
    assert [(m.subject, m.to) for m in mail.outbox] == [
        ("plan_started 0", owner),
        ("topup_succeeded 1", managers),
        ("renewal_succeeded 2", managers),
        ("renewal_failed 3", owner),
        ("topup_disabled 4", owner),
    ]
    assert list(BillingNotice.objects.values_list("sent_at", flat=True).distinct()) == [T0]


def test_sending_runs_the_same_queries_for_one_notice_or_many():
    org, people = team()
    notification_preferences_set(membership=people["ada"], choices={"auto_topup": False}, now=T0)
    add(org, [K.TOPUP_SUCCEEDED], tag="one")
    with CaptureQueriesContext(connection) as one:
        assert billing_notices_send(now=T0) == 1
    # Given five organizations with their people and preferences, and every kind of notice for each
    add(org, K.values, tag="many")
    for i in range(4):
        other, others = team(suffix=str(i))
        notification_preferences_set(membership=others["ada"], choices={"renewals": False}, now=T0)
        add(other, K.values, tag="many")
    mail.outbox.clear()
    # When they are sent, then the sender runs the same queries as for one
    with CaptureQueriesContext(connection) as many:
        assert billing_notices_send(now=T0) == 5 * len(K.values)
    assert len(many.captured_queries) == len(one.captured_queries)
    # one email per notice: to the owner alone where the admin opted out (auto top-up in the first
    # organization, renewals in the others), else to both
    assert sorted(len(m.to) for m in mail.outbox) == [1] * 5 + [2] * (5 * len(K.values) - 5)
