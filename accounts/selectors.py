from __future__ import annotations

from accounts.models import ApiKey, Membership, Organization, ServiceToken


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
