"""Forms of the customer dashboard's account pages. They validate; services write."""

from __future__ import annotations

import unicodedata
import zoneinfo
from collections.abc import Iterator, Mapping
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.forms import BoundField
from django.utils.translation import gettext_lazy as _

from accounts.models import NotificationCategory, Role, User
from accounts.notifications import CATEGORY_INFO


def _casefold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


TIMEZONES = sorted(zoneinfo.available_timezones())


def timezone_valid(name: str) -> bool:
    return name in TIMEZONES or name == "UTC"


class EmailAuthenticationForm(AuthenticationForm):
    """Log in with an email address (case-insensitive, as stored)."""

    username = forms.EmailField(
        label=_("Email address"),
        max_length=254,
        widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}),
    )

    def clean_username(self) -> str:
        return str(self.cleaned_data["username"]).strip().lower()


class SignupForm(forms.Form):
    name = forms.CharField(
        label=_("Your name"), max_length=150, required=False, widget=forms.TextInput(attrs={"autocomplete": "name"})
    )
    email = forms.EmailField(
        label=_("Email address"), max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"})
    )
    password = forms.CharField(
        label=_("Password"),
        strip=False,
        max_length=128,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=_("At least 8 characters; not only digits, and not a common password."),
    )

    def clean_email(self) -> str:
        email = str(self.cleaned_data["email"]).strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError(_("An account with this email address already exists. Log in instead."))
        return email

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        password = data.get("password")
        if password:
            try:
                password_validation.validate_password(
                    password, User(email=data.get("email", ""), name=data.get("name", ""))
                )
            except forms.ValidationError as error:
                self.add_error("password", error)
        return data


class InviteAwarePasswordResetForm(PasswordResetForm):
    """Django skips users without a usable password; invited people have none until they set one."""

    def get_users(self, email: str) -> Iterator[Any]:
        wanted = _casefold(email.strip())
        # Compared again after Unicode folding, as Django does (CVE-2019-19844).
        return (
            u for u in User.objects.filter(email__iexact=email.strip(), is_active=True) if _casefold(u.email) == wanted
        )


class ProfileForm(forms.ModelForm):
    timezone = forms.ChoiceField(label=_("Time zone"), choices=[(tz, tz) for tz in TIMEZONES])
    language = forms.ChoiceField(label=_("Language"), choices=settings.LANGUAGES)

    class Meta:
        model = User
        fields = ["name", "timezone", "language"]
        labels = {"name": _("Your name")}


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(
        label=_("Key name"),
        max_length=100,
        help_text=_("Where the key is used, e.g. “CI runner”."),
    )

    def clean_name(self) -> str:
        name = str(self.cleaned_data["name"]).strip()
        if not name:
            raise forms.ValidationError(_("Give the key a name."))
        return name


def role_choices(actor_role: str) -> list[tuple[str, str]]:
    """Roles an actor may hand out: owners any, admins admin or member."""
    allowed = [Role.OWNER, Role.ADMIN, Role.MEMBER] if actor_role == Role.OWNER else [Role.ADMIN, Role.MEMBER]
    return [(str(role.value), str(role.label)) for role in allowed]


class InviteForm(forms.Form):
    email = forms.EmailField(label=_("Email address"), max_length=254)
    role = forms.ChoiceField(label=_("Role"))

    def __init__(self, *args: Any, actor_role: str = Role.MEMBER, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = role_choices(actor_role)  # type: ignore[attr-defined]
        self.fields["role"].initial = Role.MEMBER

    def clean_email(self) -> str:
        return str(self.cleaned_data["email"]).strip().lower()


class RoleForm(forms.Form):
    role = forms.ChoiceField(label=_("Role"))

    def __init__(self, *args: Any, actor_role: str = Role.MEMBER, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["role"].choices = role_choices(actor_role)  # type: ignore[attr-defined]


class NotificationPreferencesForm(forms.Form):
    """A checkbox per category of email the viewer's role is offered (`choices`, from the selector
    `notification_choices`). Categories the role is not offered have no field, and locked ones are
    disabled, so a forged value for either is never read: Django keeps a disabled field's initial."""

    GROUPS = (("usage", _("Usage and credits")), ("billing", _("Billing and payments")))

    def __init__(self, *args: Any, choices: Mapping[NotificationCategory, tuple[bool, bool]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        for category, (enabled, locked) in choices.items():
            name = str(category.value)
            field = forms.BooleanField(
                label=category.label,
                required=False,
                initial=enabled,
                disabled=locked,
                help_text=CATEGORY_INFO[category].description,
            )
            if locked:
                field.widget.attrs["aria-describedby"] = f"id_{name}_helptext id_{name}_locked"
            self.fields[name] = field

    def groups(self) -> list[tuple[str, str, list[BoundField]]]:
        """(key, legend, fields) for each group the viewer has a field in, in the page's order."""
        by_group: dict[str, list[BoundField]] = {}
        for name in self.fields:
            by_group.setdefault(CATEGORY_INFO[NotificationCategory(name)].group, []).append(self[name])
        return [(key, str(legend), by_group[key]) for key, legend in self.GROUPS if key in by_group]

    def editable_choices(self) -> dict[str, bool]:
        """The choices to save: every field the viewer may change (call after is_valid)."""
        return {name: bool(self.cleaned_data[name]) for name, field in self.fields.items() if not field.disabled}
