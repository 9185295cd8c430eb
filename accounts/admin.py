"""Admin for people and credentials.

The Organization admin lives in billing/admin.py: it shows the plan and balance and grants credits,
and accounts may not import the apps above it.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import BaseUserCreationForm, SetUnusablePasswordMixin
from django.contrib.auth.forms import UserChangeForm as DjangoUserChangeForm
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from accounts.authentication import clear_cache
from accounts.models import ApiKey, Membership, NotificationPreference, ServiceToken, User
from accounts.services import api_key_revoke
from core import clock
from core.admin import FastChangeListMixin, ReadOnlyAdmin


class UserCreationForm(SetUnusablePasswordMixin, BaseUserCreationForm):
    """An operator may create a user without a password (they set one through a reset)."""

    usable_password = SetUnusablePasswordMixin.create_usable_password_field()

    class Meta:
        model = User
        fields = ("email",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["password1"].required = False
        self.fields["password2"].required = False

    def clean_email(self) -> str:
        email = User.objects.normalize_email(self.cleaned_data["email"]).lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError(_("A user with this email address exists already."), code="unique")
        return email


class UserChangeForm(DjangoUserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


class UserMembershipInline(admin.TabularInline):
    model = Membership
    fk_name = "user"
    raw_id_fields = ("organization",)
    extra = 0
    fields = ("organization", "role", "created_at")
    readonly_fields = ("created_at",)


@admin.register(User)
class UserAdmin(FastChangeListMixin, DjangoUserAdmin):
    """Users log in by email; there is no username."""

    form = UserChangeForm
    add_form = UserCreationForm
    list_display = ("id", "email", "name", "is_staff", "is_superuser", "is_active", "date_joined")
    list_filter = ("is_staff", "is_superuser", "is_active")
    search_fields = ("email", "name")
    ordering = ("-id",)
    readonly_fields = ("date_joined", "last_login")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        (_("Profile"), {"fields": ("name", "language", "timezone")}),
        (_("Permissions"), {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        (_("Dates"), {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "usable_password", "password1", "password2")}),)
    filter_horizontal = ("groups", "user_permissions")
    inlines = (UserMembershipInline,)

    def get_inlines(self, request: HttpRequest, obj: User | None = None) -> Any:
        return self.inlines if obj is not None else ()  # the add form asks for email and password only


class NotificationPreferenceInline(admin.TabularInline):
    """Saved email choices, read only: people change their own on the Notifications page."""

    model = NotificationPreference
    extra = 0
    fields = ("category", "enabled", "updated_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Membership)
class MembershipAdmin(FastChangeListMixin, admin.ModelAdmin):
    list_display = ("id", "organization", "user", "role", "created_at")
    list_filter = ("role",)
    list_select_related = ("organization", "user")
    raw_id_fields = ("organization", "user")
    search_fields = ("user__email", "organization__name")
    id_search_fields = ("pk", "organization_id", "user_id")
    ordering = ("-id",)
    inlines = (NotificationPreferenceInline,)


@admin.register(NotificationPreference)
class NotificationPreferenceAdmin(ReadOnlyAdmin):
    """Why someone did or did not get an email: the choices they saved (no row: their role's default).

    Read only: people change their own choices on the Notifications page.
    """

    list_display = ("id", "membership", "category", "enabled", "updated_at")
    list_filter = ("category", "enabled")
    list_select_related = ("membership__user", "membership__organization")
    raw_id_fields = ("membership",)
    search_fields = ("membership__user__email", "^membership__organization__name")
    id_search_fields = ("pk", "membership_id", "membership__organization_id")
    ordering = ("-id",)
    fields = ("membership", "category", "enabled", "updated_at")
    readonly_fields = fields


class RevokeActionMixin:
    """Credentials are listed and revoked here, never shown or created (keys are shown once when created)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        opts = self.opts  # type: ignore[attr-defined]
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    @admin.display(boolean=True, description=_("active"))
    def is_active(self, obj: ApiKey | ServiceToken) -> bool:
        return obj.revoked_at is None


@admin.register(ApiKey)
class ApiKeyAdmin(RevokeActionMixin, ReadOnlyAdmin):
    list_display = (
        "id",
        "name",
        "prefix",
        "organization",
        "is_active",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    list_select_related = ("organization", "created_by")
    raw_id_fields = ("organization", "created_by")
    search_fields = ("^prefix", "name", "^organization__name")
    id_search_fields = ("pk", "organization_id")
    ordering = ("-id",)
    # key_hash is left out on purpose: nothing secret, or derived from a secret, is shown.
    fields = ("name", "prefix", "organization", "created_by", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    actions = ("revoke",)

    @admin.action(description=_("Revoke selected API keys"), permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        now = clock.now()
        keys = list(queryset.filter(revoked_at__isnull=True)[:1000])
        for key in keys:
            api_key_revoke(api_key=key, now=now)
        clear_cache()
        self.message_user(request, _("Revoked %(n)d API keys.") % {"n": len(keys)}, messages.SUCCESS)


@admin.register(ServiceToken)
class ServiceTokenAdmin(RevokeActionMixin, ReadOnlyAdmin):
    list_display = ("id", "name", "scope", "prefix", "is_active", "created_at", "revoked_at")
    list_filter = ("scope", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "^prefix")
    ordering = ("-id",)
    fields = ("name", "scope", "prefix", "created_at", "revoked_at")
    readonly_fields = fields
    actions = ("revoke",)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        extra_context = {
            **(extra_context or {}),
            "subtitle": _("Create tokens with: manage.py create_service_token NAME --scope usage|admin"),
        }
        return super().changelist_view(request, extra_context)

    @admin.action(description=_("Revoke selected service tokens"), permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ServiceToken]) -> None:
        # accounts.services has no service_token_revoke yet; this one-column update is all it would do.
        count = ServiceToken.objects.filter(
            pk__in=list(queryset.values_list("pk", flat=True)[:1000]), revoked_at__isnull=True
        ).update(revoked_at=clock.now())
        clear_cache()
        self.message_user(request, _("Revoked %(n)d service tokens.") % {"n": count}, messages.SUCCESS)
