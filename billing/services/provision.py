"""An organization's commercial setup: subscription and credit account.

It lives in billing because it touches accounts, plans and billing; lower apps cannot call up.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from accounts.models import Membership, Organization, User
from accounts.services import membership_set, organization_create, user_create
from billing.models import CreditAccount
from billing.services.book import credit_books_lock
from core.errors import DomainError, NotFound
from plans import services as plan_services
from plans.models import Plan, Subscription
from plans.selectors import plan_by_key, plan_default


def _plan(plan_key: str | None) -> Plan:
    plan = plan_by_key(plan_key) if plan_key else plan_default()
    if plan is None:
        raise NotFound(f"There is no plan {plan_key!r}." if plan_key else "No plan exists yet.", code="plan_not_found")
    return plan


@transaction.atomic
def organization_setup(*, organization: Organization, plan_key: str | None, now: datetime) -> Subscription:
    """Give an organization its credit account and a subscription (the default plan if none named)."""
    plan = _plan(plan_key)
    CreditAccount.objects.get_or_create(organization=organization)
    subscription = Subscription.objects.filter(organization=organization).first()
    if subscription is None:
        subscription = plan_services.subscription_start(organization=organization, plan=plan, now=now)
    return subscription


@transaction.atomic
def organization_provision(
    *, name: str, owner_email: str, plan_key: str | None, now: datetime, timezone: str = "UTC"
) -> Organization:
    """A new organization owned by `owner_email` (a user is created, without a password, if new)."""
    if not name.strip():
        raise DomainError("An organization needs a name.", code="invalid_name")
    plan = _plan(plan_key)
    owner = User.objects.filter(email__iexact=owner_email).first()
    if owner is None:
        owner, personal = user_create(email=owner_email)
        organization_setup(organization=personal, plan_key=None, now=now)
    org = organization_create(name=name.strip(), owner=owner, timezone=timezone)
    organization_setup(organization=org, plan_key=plan.key, now=now)
    return org


@transaction.atomic
def user_signup(*, email: str, password: str | None, name: str = "", now: datetime) -> tuple[User, Organization]:
    """A user with a personal organization on the default plan."""
    user, org = user_create(email=email, password=password, name=name)
    organization_setup(organization=org, plan_key=None, now=now)
    return user, org


@transaction.atomic
def subscription_change(*, organization_id: int, plan_key: str, now: datetime) -> Subscription:
    """Change plan under the organization's lock, so no usage decision straddles the change."""
    books = credit_books_lock([organization_id], now=now)
    if organization_id not in books:
        raise NotFound("There is no such organization.", code="organization_not_found")
    organization = books[organization_id].account.organization
    return plan_services.subscription_change(organization=organization, plan_key=plan_key, now=now)


@transaction.atomic
def member_invite(*, organization: Organization, email: str, role: str, now: datetime) -> tuple[User, bool]:
    """Add `email` to the organization with `role`; a new address gets a user without a password
    (and their own personal organization). Returns the user and whether they are new."""
    user = User.objects.filter(email__iexact=email).first()
    new_user = user is None
    if user is None:
        user, _personal = user_signup(email=email, password=None, now=now)
    elif Membership.objects.filter(organization=organization, user=user).exists():
        raise DomainError(f"{email} is already a member.", code="already_member")
    membership_set(organization=organization, user=user, role=role)
    return user, new_user
