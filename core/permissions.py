from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from core.errors import NotFound


class IsAdminScope(BasePermission):
    """Only service tokens with the admin scope."""

    message = "This call needs a service token with the admin scope."

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(getattr(request.auth, "is_admin", False))


class IsServiceToken(BasePermission):
    message = "This call needs a service token."

    def has_permission(self, request: Request, view: Any) -> bool:
        return getattr(request.auth, "kind", None) == "service"


def check_organization(request: Request, organization_id: int) -> None:
    """A customer key may touch only its own organization; others look absent (404), not forbidden."""
    principal: Any = request.auth  # accounts.authentication.Principal (core cannot import accounts)
    too_large = organization_id > 2**63 - 1  # no such id can exist; the database would refuse it
    if principal is None or too_large or not principal.may_access(organization_id):
        raise NotFound(f"There is no organization {organization_id}.", code="organization_not_found")
