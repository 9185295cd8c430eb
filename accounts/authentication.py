"""`Authorization: Bearer <token>` for the internal API.

Two kinds of principal: a service token (the AI product's services; scope `usage` or `admin`; any
organization) and a customer API key (bound to one organization; usage scope only). Successful
look-ups are cached in-process for AUTH_CACHE_SECONDS, so the hot path costs no query for auth;
a revoked credential stops working within that time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from threading import Lock

from django.conf import settings
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts import selectors
from accounts.models import Scope
from accounts.services import secret_hash


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "service" or "api_key"
    id: int
    scope: str
    organization_id: int | None  # set for customer API keys: the only organization they may touch

    @property
    def is_authenticated(self) -> bool:
        return True

    def may_access(self, organization_id: int) -> bool:
        return self.organization_id is None or self.organization_id == organization_id

    @property
    def is_admin(self) -> bool:
        return self.kind == "service" and self.scope == Scope.ADMIN


_cache: dict[str, tuple[float, Principal]] = {}
_cache_lock = Lock()
_CACHE_MAX = 10_000


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def principal_for_secret(secret: str) -> Principal | None:
    digest = secret_hash(secret)
    now = time.monotonic()
    hit = _cache.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1]
    principal: Principal | None = None
    token = selectors.service_token_by_hash(digest)
    if token is not None:
        principal = Principal("service", token.pk, token.scope, None)
    else:
        key = selectors.api_key_by_secret_hash(digest)
        if key is not None:
            principal = Principal("api_key", key.pk, Scope.USAGE, key.organization_id)
    if principal is not None:
        with _cache_lock:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[digest] = (now + settings.AUTH_CACHE_SECONDS, principal)
    return principal


class BearerAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Principal, Principal] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0] != self.keyword:
            raise exceptions.AuthenticationFailed("Send `Authorization: Bearer <token>`.")
        principal = principal_for_secret(parts[1])
        if principal is None:
            raise exceptions.AuthenticationFailed("This token is unknown or revoked.")
        # request.user is the principal too, so IsAuthenticated works without a Django user.
        return principal, principal

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
