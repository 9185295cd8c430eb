"""Dashboard pages about people and access: log in and out, password reset, settings, API keys,
and which emails each person gets from an organization.

Also the plumbing every dashboard page uses: `org_page` resolves the organization in the URL
against the viewer's memberships (another organization's page is a 404, a manager-only action by
a member is a 403), remembers it as the current organization, and activates the viewer's time zone.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render, resolve_url
from django.urls import reverse, reverse_lazy
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from django.views.i18n import set_language

from accounts.forms import (
    ApiKeyCreateForm,
    EmailAuthenticationForm,
    InviteAwarePasswordResetForm,
    NotificationPreferencesForm,
    ProfileForm,
    timezone_valid,
)
from accounts.models import ApiKey, Membership, Organization, Role, User
from accounts.selectors import notification_choices
from accounts.services import api_key_create, api_key_revoke, notification_preferences_set, user_preferences_set
from core.clock import now as clock_now

SESSION_ORG = "current_org_id"
SESSION_TZ_DETECTED = "tz_detected"


# Plumbing shared by every dashboard page ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrgContext:
    organization: Organization
    membership: Membership
    memberships: list[Membership]  # every organization of the viewer, for the switcher

    @property
    def role(self) -> str:
        return self.membership.role

    @property
    def can_manage(self) -> bool:
        return self.membership.role in (Role.OWNER, Role.ADMIN)


def activate_user_timezone(request: HttpRequest) -> None:
    user = request.user
    name = getattr(user, "timezone", "") or "UTC"
    try:
        timezone.activate(zoneinfo.ZoneInfo(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        timezone.activate(zoneinfo.ZoneInfo("UTC"))


def memberships_of(user: Any) -> list[Membership]:
    return list(
        Membership.objects.filter(user=user)
        .select_related("organization")
        .order_by("-organization__is_personal", "organization__name", "id")
    )


def org_page(*, manage: bool = False) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """Decorate a view `(request, ctx, ...)` served at a URL with `org_id`.

    Not logged in: to the login page (an htmx poll gets HX-Redirect, so the page moves rather
    than the login form landing inside the polled region). Not a member: 404 (another
    organization's pages look absent). `manage=True`: owners and admins only, 403 for members.
    """

    def decorate(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @wraps(view)
        def wrapper(request: HttpRequest, org_id: int, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                if request.headers.get("HX-Request") == "true":
                    return HttpResponse(status=204, headers={"HX-Redirect": resolve_url(settings.LOGIN_URL)})
                return redirect_to_login(request.get_full_path())
            memberships = memberships_of(request.user)
            membership = next((m for m in memberships if m.organization_id == org_id), None)
            if membership is None:
                raise Http404(_("There is no such organization."))
            ctx = OrgContext(organization=membership.organization, membership=membership, memberships=memberships)
            if manage and not ctx.can_manage:
                raise PermissionDenied(_("Only owners and admins can do this."))
            if request.session.get(SESSION_ORG) != org_id:
                request.session[SESSION_ORG] = org_id
            activate_user_timezone(request)
            return view(request, ctx, *args, **kwargs)

        return wrapper

    return decorate


def render_org(
    request: HttpRequest,
    ctx: OrgContext,
    template: str,
    context: dict[str, Any],
    *,
    active: str = "",
    status: int = 200,
) -> HttpResponse:
    """Render a page of the organization with what the layout needs (switcher, nav, role)."""
    page = {
        "org": ctx.organization,
        "membership": ctx.membership,
        "memberships": ctx.memberships,
        "can_manage": ctx.can_manage,
        "active": active,
        "detect_tz": _should_detect_timezone(request),
        **context,
    }
    return render(request, template, page, status=status)


def _should_detect_timezone(request: HttpRequest) -> bool:
    user = request.user
    return bool(
        user.is_authenticated
        and getattr(user, "timezone", "UTC") == "UTC"
        and not request.session.get(SESSION_TZ_DETECTED)
    )


# Home and organization switch -----------------------------------------------------------------


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The current organization's overview: the one last visited, else the personal one."""
    memberships = memberships_of(request.user)
    if not memberships:
        activate_user_timezone(request)
        return render(request, "accounts/no_organization.html", {"detect_tz": False})
    chosen = _current_membership(request, memberships)
    assert chosen is not None
    return redirect("org_overview", org_id=chosen.organization_id)


# Log in, log out, password reset --------------------------------------------------------------


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    authentication_form = EmailAuthenticationForm
    redirect_authenticated_user = True

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        language = getattr(form.get_user(), "language", "")
        if language in dict(settings.LANGUAGES):
            response.set_cookie(settings.LANGUAGE_COOKIE_NAME, language, samesite="Lax")
        return response


class LogoutView(auth_views.LogoutView):
    next_page = "login"


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "accounts/password_reset.html"
    form_class = InviteAwarePasswordResetForm
    email_template_name = "accounts/email/password_reset.txt"
    subject_template_name = "accounts/email/password_reset_subject.txt"
    success_url = reverse_lazy("password_reset_done")


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"


# Personal settings: name, time zone, language ---------------------------------------------------


@login_required
def settings_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    if request.method == "POST":
        form = ProfileForm(request.POST, instance=user)
        if form.is_valid():
            form.save()
            request.session[SESSION_TZ_DETECTED] = True
            messages.success(request, _("Your settings are saved."))
            response = redirect("settings")
            response.set_cookie(settings.LANGUAGE_COOKIE_NAME, user.language, samesite="Lax")
            return response
    else:
        form = ProfileForm(instance=user, initial={"language": user.language or translation.get_language()})
    activate_user_timezone(request)
    memberships = memberships_of(user)
    current = _current_membership(request, memberships)
    return render(
        request,
        "accounts/settings.html",
        {
            "form": form,
            "memberships": memberships,
            "detect_tz": False,
            "active": "settings",
            "membership": current,
            "org": current.organization if current else None,
            "can_manage": bool(current and current.can_manage_billing),
        },
    )


def _current_membership(request: HttpRequest, memberships: list[Membership]) -> Membership | None:
    wanted = request.session.get(SESSION_ORG)
    return next((m for m in memberships if m.organization_id == wanted), None) or (
        memberships[0] if memberships else None
    )


@require_POST
@login_required
def timezone_detected(request: HttpRequest) -> HttpResponse:
    """The browser's zone, posted once by static/app.js while the account still says UTC."""
    name = request.POST.get("timezone", "")[:64]
    if not timezone_valid(name):
        return HttpResponseBadRequest("unknown time zone")
    user = request.user
    assert isinstance(user, User)
    request.session[SESSION_TZ_DETECTED] = True
    changed = user.timezone == "UTC" and name != "UTC"
    if changed:
        user_preferences_set(user=user, timezone=name)
    return JsonResponse({"timezone": user.timezone, "changed": changed})


@require_POST
def language_set(request: HttpRequest) -> HttpResponse:
    """Django's set_language, and the choice remembered on the account."""
    language = request.POST.get("language", "")
    user = request.user
    known = language in dict(settings.LANGUAGES)
    if known and isinstance(user, User) and user.is_authenticated:
        user_preferences_set(user=user, language=language)
    return set_language(request)


# API keys ---------------------------------------------------------------------------------------


def _keys_page(
    request: HttpRequest,
    ctx: OrgContext,
    form: ApiKeyCreateForm,
    *,
    secret: str = "",
    created: ApiKey | None = None,
    status: int = 200,
) -> HttpResponse:
    keys = (
        ApiKey.objects.filter(organization=ctx.organization).select_related("created_by").order_by("-created_at", "-id")
    )
    return render_org(
        request,
        ctx,
        "accounts/api_keys.html",
        {
            "keys": keys,
            "form": form,
            "secret": secret,
            "created": created,
        },
        active="keys",
        status=status,
    )


@org_page()
def api_keys(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    if request.method == "POST":
        if not ctx.can_manage:
            raise PermissionDenied(_("Only owners and admins can create API keys."))
        form = ApiKeyCreateForm(request.POST)
        if form.is_valid():
            key, secret = api_key_create(
                organization=ctx.organization,
                name=form.cleaned_data["name"],
                created_by=request.user,  # type: ignore[arg-type]
            )
            # Shown once, in this response only: the secret is not stored anywhere.
            return _keys_page(request, ctx, ApiKeyCreateForm(), secret=secret, created=key)
        return _keys_page(request, ctx, form, status=400)
    return _keys_page(request, ctx, ApiKeyCreateForm())


@require_POST
@org_page(manage=True)
def api_key_revoke_view(request: HttpRequest, ctx: OrgContext, key_id: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=key_id, organization=ctx.organization)
    api_key_revoke(api_key=key, now=clock_now())
    messages.success(
        request, _("The key “%(name)s” is revoked. Requests with it are refused from now on.") % {"name": key.name}
    )
    return redirect(reverse("org_api_keys", kwargs={"org_id": ctx.organization.pk}))


# Notifications ----------------------------------------------------------------------------------


@org_page()
def notifications_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """The viewer's own choice of emails from this organization. Any member may change theirs;
    the role decides what is offered (accounts/notifications.py)."""
    membership = ctx.membership
    saved = False
    if request.method == "POST":
        form = NotificationPreferencesForm(request.POST, choices=notification_choices(membership=membership))
        if form.is_valid():
            notification_preferences_set(membership=membership, choices=form.editable_choices(), now=clock_now())
            if not request.headers.get("HX-Request"):
                messages.success(request, _("Your notification settings are saved."))
                return redirect("org_notifications", org_id=ctx.organization.pk)
            saved = True
    form = NotificationPreferencesForm(choices=notification_choices(membership=membership))
    if saved:
        # htmx: the form again, as saved, and the confirmation in the page's status region.
        page = {"form": form, "org": ctx.organization, "membership": membership, "saved": True}
        return render(request, "accounts/notifications.html#notifications-form", page)
    return render_org(request, ctx, "accounts/notifications.html", {"form": form}, active="notifications")
