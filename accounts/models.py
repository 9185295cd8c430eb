from __future__ import annotations

import zoneinfo
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

TIMEZONE_CHOICES = [(name, name) for name in sorted(zoneinfo.available_timezones())]


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Logs in with an email address."""

    email = models.EmailField(_("email address"), unique=True)
    name = models.CharField(_("name"), max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(auto_now_add=True)
    language = models.CharField(max_length=8, blank=True, default="")
    timezone = models.CharField(max_length=64, default="UTC")

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        verbose_name = _("user")
        verbose_name_plural = _("users")

    def __str__(self) -> str:
        return self.email


class Organization(models.Model):
    """Who pays: every user has a personal one, and may belong to others."""

    name = models.CharField(_("name"), max_length=200)
    is_personal = models.BooleanField(default=False)
    # Periods are computed in this zone, so a monthly anchor keeps its wall-clock time across DST.
    timezone = models.CharField(max_length=64, default="UTC")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("organization")
        verbose_name_plural = _("organizations")

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"


class Role(models.TextChoices):
    OWNER = "owner", _("Owner")
    ADMIN = "admin", _("Admin")
    MEMBER = "member", _("Member")


class Membership(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="membership_unique_user_per_org"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} as {self.role}"

    @property
    def can_manage_billing(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)


class NotificationCategory(models.TextChoices):
    """What an email is about; people choose per category (accounts/notifications.py maps each kind)."""

    USAGE_ALERTS = "usage_alerts", _("Usage alerts")
    ALLOWANCE_RESETS = "allowance_resets", _("Allowance resets")
    CREDIT_BALANCE = "credit_balance", _("Credit balance")
    RECEIPTS = "receipts", _("Purchases and receipts")
    AUTO_TOPUP = "auto_topup", _("Auto top-up charges")
    RENEWALS = "renewals", _("Plan renewals")
    PAYMENT_PROBLEMS = "payment_problems", _("Payment problems")


class NotificationPreference(models.Model):
    """One person's choice for one category of email in one organization.

    Only choices someone saved are stored; without a row the role's default applies, and the role
    decides what may be chosen at all (accounts/notifications.py), so a row never widens it.
    """

    membership = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="notification_preferences")
    category = models.CharField(max_length=32, choices=NotificationCategory.choices)
    enabled = models.BooleanField()
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name = _("notification preference")
        verbose_name_plural = _("notification preferences")
        constraints = [
            models.UniqueConstraint(fields=["membership", "category"], name="notification_pref_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.category} {'on' if self.enabled else 'off'} for membership #{self.membership_id}"


class ApiKey(models.Model):
    """A customer's key, bound to one organization. Shown once; stored as SHA-256 of the secret.

    A fast hash is enough: the secret is 32 random bytes, so there is nothing to brute-force,
    and the lookup stays one indexed query on the hot path.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text=_("Visible start of the key, to recognise it."))
    key_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("API key")
        indexes = [models.Index(fields=["organization", "-created_at"], name="apikey_org_created")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class Scope(models.TextChoices):
    USAGE = "usage", _("Usage: record, authorize, reserve, read")
    ADMIN = "admin", _("Admin: provision organizations, plans and grants")


class ServiceToken(models.Model):
    """A token for the AI product's own services. Not bound to an organization."""

    name = models.CharField(max_length=100, unique=True)
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.USAGE)
    prefix = models.CharField(max_length=16)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(scope__in=["usage", "admin"]), name="servicetoken_scope_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.name} [{self.scope}]"
