from __future__ import annotations

import zoneinfo
from collections.abc import Collection

from django.conf import settings
from django.db.models import FilteredRelation, Q
from django.utils import translation

from accounts.models import ApiKey, Membership, NotificationCategory, Organization, ServiceToken
from accounts.notifications import MANAGER_ROLES, Recipient, categories_offered, category_locked, receives


def api_key_by_secret_hash(key_hash: str) -> ApiKey | None:
    return ApiKey.objects.select_related("organization").filter(key_hash=key_hash, revoked_at__isnull=True).first()


def service_token_by_hash(token_hash: str) -> ServiceToken | None:
    return ServiceToken.objects.filter(token_hash=token_hash, revoked_at__isnull=True).first()


def membership_role(*, organization_id: int, user_id: int) -> str | None:
    return (
        Membership.objects.filter(organization_id=organization_id, user_id=user_id)
        .values_list("role", flat=True)
        .first()
    )


def organization_get(*, organization_id: int) -> Organization | None:
    return Organization.objects.filter(pk=organization_id).first()


def is_member(*, organization_id: int, user_id: int) -> bool:
    return Membership.objects.filter(organization_id=organization_id, user_id=user_id).exists()


# Notification preferences -------------------------------------------------------------------------


def notification_choices(*, membership: Membership) -> dict[NotificationCategory, tuple[bool, bool]]:
    """For each category the member's role is offered, in the page's order: (receives it, locked on)."""
    saved = dict(membership.notification_preferences.values_list("category", "enabled"))
    return {
        category: (
            receives(role=membership.role, category=category, choice=saved.get(category)),
            category_locked(membership.role, category),
        )
        for category in categories_offered(membership.role)
    }


def notification_recipients(
    *, organization_ids: Collection[int], categories: Collection[str]
) -> dict[tuple[int, str], list[str]]:
    """Who gets emails of each category in each organization: {(organization id, category): emails}
    (notification_recipients_with_language, without the languages)."""
    found = notification_recipients_with_language(organization_ids=organization_ids, categories=categories)
    return {key: [person.email for person in people] for key, people in found.items()}


def notification_recipients_with_language(
    *, organization_ids: Collection[int], categories: Collection[str]
) -> dict[tuple[int, str], list[Recipient]]:
    """Who gets emails of each category in each organization, in which language and time zone:
    {(organization id, category): [(email, language, time zone)]}.

    One query for any number of organizations and categories (the senders call it once per batch):
    active people who manage the organization, plus members who saved an opt-in; each person's role,
    default and saved choice then decide (accounts/notifications.py). People in membership order.
    """
    wanted = set(categories)
    if not wanted or not organization_ids:
        return {}
    rows = (
        Membership.objects.annotate(
            pref=FilteredRelation(
                "notification_preferences", condition=Q(notification_preferences__category__in=wanted)
            )
        )
        .filter(organization_id__in=set(organization_ids), user__is_active=True)
        .filter(Q(role__in=list(MANAGER_ROLES)) | Q(pref__enabled=True))
        .order_by("id", "pref__category")
        .values_list(
            "id",
            "organization_id",
            "user__email",
            "user__language",
            "user__timezone",
            "role",
            "pref__category",
            "pref__enabled",
        )
    )
    people: dict[int, tuple[int, Recipient, str, dict[str, bool]]] = {}
    for membership_id, org_id, email, language, zone, role, category, enabled in rows:
        recipient = Recipient(email, _email_language(language), _email_timezone(zone))
        person = people.setdefault(membership_id, (org_id, recipient, role, {}))
        if category is not None:
            person[3][category] = enabled
    recipients: dict[tuple[int, str], list[Recipient]] = {}
    for org_id, recipient, role, saved in people.values():
        for category in wanted:
            if receives(role=role, category=category, choice=saved.get(category)):
                recipients.setdefault((org_id, category), []).append(recipient)
    return recipients


def _email_language(saved: str) -> str:
    if saved:
        try:
            return translation.get_supported_language_variant(saved)
        except LookupError:  # a language no longer offered
            pass
    return settings.LANGUAGE_CODE


def _email_timezone(saved: str) -> str:
    """The zone an email writes times in: the person's (as the dashboard shows them), else the site's."""
    if saved:
        try:
            zoneinfo.ZoneInfo(saved)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # a name this system does not know
            pass
        else:
            return saved
    return settings.TIME_ZONE
