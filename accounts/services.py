"""Writes for people, organizations and credentials."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import datetime

from django.db import transaction
from django.utils.translation import gettext_lazy as _

from accounts.models import ApiKey, Membership, NotificationPreference, Organization, Role, ServiceToken, User
from accounts.notifications import category_editable
from core.errors import DomainError, NotFound

API_KEY_PREFIX = "fck_"
SERVICE_TOKEN_PREFIX = "fcs_"


def secret_hash(secret: str) -> str:
    """SHA-256 hex of a high-entropy secret (keys and tokens); fast on the hot path by design."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def organization_create(
    *, name: str, owner: User | None = None, is_personal: bool = False, timezone: str = "UTC"
) -> Organization:
    org = Organization.objects.create(name=name, is_personal=is_personal, timezone=timezone)
    if owner is not None:
        Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
    return org


@transaction.atomic
def user_create(*, email: str, password: str | None = None, name: str = "") -> tuple[User, Organization]:
    """A user and their personal organization, owned by them. Callers add the subscription."""
    user = User.objects.create_user(email=email, password=password, name=name)
    org = organization_create(name=name or email.split("@")[0], owner=user, is_personal=True)
    return user, org


def membership_set(*, organization: Organization, user: User, role: str) -> Membership:
    membership, _ = Membership.objects.update_or_create(organization=organization, user=user, defaults={"role": role})
    return membership


def api_key_create(*, organization: Organization, name: str, created_by: User | None = None) -> tuple[ApiKey, str]:
    """Returns the key row and the secret, which is shown once and never stored."""
    secret = _new_secret(API_KEY_PREFIX)
    key = ApiKey.objects.create(
        organization=organization,
        name=name,
        prefix=secret[: len(API_KEY_PREFIX) + 6],
        key_hash=secret_hash(secret),
        created_by=created_by,
    )
    return key, secret


def api_key_revoke(*, api_key: ApiKey, now: datetime) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = now
        api_key.save(update_fields=["revoked_at"])
    return api_key


def service_token_create(*, name: str, scope: str) -> tuple[ServiceToken, str]:
    secret = _new_secret(SERVICE_TOKEN_PREFIX)
    token = ServiceToken.objects.create(
        name=name, scope=scope, prefix=secret[: len(SERVICE_TOKEN_PREFIX) + 6], token_hash=secret_hash(secret)
    )
    return token, secret


def service_token_replace(*, name: str, scope: str) -> tuple[ServiceToken, str]:
    """A new token under `name`, the old one (if any) deleted: for a demo token whose secret was lost."""
    with transaction.atomic():
        ServiceToken.objects.filter(name=name).delete()
        return service_token_create(name=name, scope=scope)


def _locked_membership(*, organization: Organization, membership_id: int, actor_role: str) -> tuple[Membership, int]:
    """The membership to change and how many owners there are, with the owners' rows locked so
    two concurrent changes cannot both remove the last owner."""
    owners = list(Membership.objects.select_for_update().filter(organization=organization, role=Role.OWNER))
    target = Membership.objects.select_related("user").filter(pk=membership_id, organization=organization).first()
    if target is None:
        raise NotFound("There is no such member.", code="membership_not_found")
    if actor_role != Role.OWNER and target.role == Role.OWNER:
        raise DomainError(str(_("Only owners can change an owner.")), code="owner_only", status=403)
    return target, len(owners)


LAST_OWNER = _("An organization needs at least one owner. Make someone else an owner first.")


@transaction.atomic
def membership_change_role(*, organization: Organization, membership_id: int, role: str, actor_role: str) -> Membership:
    target, owners = _locked_membership(organization=organization, membership_id=membership_id, actor_role=actor_role)
    if target.role == Role.OWNER and role != Role.OWNER and owners <= 1:
        raise DomainError(str(LAST_OWNER), code="last_owner")
    return membership_set(organization=organization, user=target.user, role=role)


@transaction.atomic
def membership_remove(*, organization: Organization, membership_id: int, actor_role: str) -> Membership:
    target, owners = _locked_membership(organization=organization, membership_id=membership_id, actor_role=actor_role)
    if target.role == Role.OWNER and owners <= 1:
        raise DomainError(str(LAST_OWNER), code="last_owner")
    target.delete()
    return target


def user_preferences_set(*, user: User, timezone: str | None = None, language: str | None = None) -> User:
    """Remember the viewer's time zone or language on the account (the caller validated them)."""
    fields = []
    if timezone is not None and user.timezone != timezone:
        user.timezone = timezone
        fields.append("timezone")
    if language is not None and user.language != language:
        user.language = language
        fields.append("language")
    if fields:
        user.save(update_fields=fields)
    return user


def notification_preferences_set(*, membership: Membership, choices: Mapping[str, bool], now: datetime) -> None:
    """Save a person's choice per category of email in one organization (one statement).

    Refuses a category their role may not change (a member's billing emails, an owner's payment
    emails) rather than storing a choice that would never apply.
    """
    refused = sorted(category for category in choices if not category_editable(membership.role, category))
    if refused:
        raise DomainError(
            str(_("These notifications cannot be changed for your role.")),
            code="notification_not_editable",
            status=403,
            categories=refused,
        )
    if not choices:
        return
    NotificationPreference.objects.bulk_create(
        [
            NotificationPreference(membership=membership, category=category, enabled=enabled, updated_at=now)
            for category, enabled in choices.items()
        ],
        update_conflicts=True,
        unique_fields=["membership", "category"],
        update_fields=["enabled", "updated_at"],
    )
