from __future__ import annotations

from datetime import timedelta
from functools import lru_cache

from django.db import models
from django.db.models import Q
from django.utils.translation import get_language
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization
from core.money import CREDIT_DIGITS, CREDIT_PLACES


def CreditField(**kwargs: object) -> models.DecimalField:  # noqa: N802 - reads like a field class
    return models.DecimalField(max_digits=CREDIT_DIGITS, decimal_places=CREDIT_PLACES, **kwargs)  # type: ignore[arg-type]


class Product(models.Model):
    """Groups meters for people (Codex, Sora)."""

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


class Meter(models.Model):
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="meters")
    key = models.CharField(max_length=100, unique=True, help_text=_("What the API sends, e.g. codex.local_task"))
    name = models.CharField(max_length=100)
    unit = models.CharField(max_length=32, help_text=_("Singular unit, e.g. task, second"))
    unit_plural = models.CharField(max_length=32, blank=True)
    credits_per_unit = CreditField(help_text=_("Credits charged per unit beyond the allowance"))
    is_active = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(credits_per_unit__gte=0), name="meter_credits_per_unit_nonnegative"),
        ]

    def __str__(self) -> str:
        return self.key


class Plan(models.Model):
    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    price_amount = models.PositiveIntegerField(default=0, help_text=_("Per period, in minor units"))
    currency = models.CharField(max_length=3, default="usd")
    period_months = models.PositiveSmallIntegerField(default=1)
    is_default = models.BooleanField(default=False, help_text=_("Given to new organizations"))
    is_public = models.BooleanField(default=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "price_amount"]
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=Q(is_default=True), name="plan_one_default"),
            models.CheckConstraint(condition=Q(period_months__gte=1), name="plan_period_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_free(self) -> bool:
        return self.price_amount == 0


class WindowKind(models.TextChoices):
    PERIOD = "period", _("Billing period")
    ROLLING = "rolling", _("Rolling window from first use")


class Overage(models.TextChoices):
    CREDITS = "credits", _("Draw credits")
    BLOCK = "block", _("Block")


class PlanAllowance(models.Model):
    """Included usage of one meter per window. A meter may have several (5 hours and 7 days)."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="allowances")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="allowances")
    limit = CreditField(help_text=_("Units included per window"))
    window_kind = models.CharField(max_length=16, choices=WindowKind.choices, default=WindowKind.PERIOD)
    window_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text=_("Length of a rolling window, in seconds")
    )
    # If any allowance of a meter on a plan says block, that plan never draws credits for the meter.
    overage = models.CharField(max_length=16, choices=Overage.choices, default=Overage.CREDITS)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(limit__gte=0), name="allowance_limit_nonnegative"),
            models.CheckConstraint(
                condition=(Q(window_kind="period", window_seconds__isnull=True))
                | (Q(window_kind="rolling", window_seconds__gt=0)),
                name="allowance_window_shape",
            ),
            models.UniqueConstraint(
                fields=["plan", "meter", "window_kind", "window_seconds"],
                name="allowance_unique_window",
                nulls_distinct=False,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan.key}: {self.limit} {self.meter.key} / {self.window_label}"

    @property
    def window_length(self) -> timedelta | None:
        return timedelta(seconds=self.window_seconds) if self.window_seconds else None

    @property
    def window_label(self) -> str:
        return window_label(self.window_kind, self.window_seconds)


def window_label(kind: str, seconds: int | None) -> str:
    """ "5 hours", "7 days", "billing period", in the active language."""
    return _window_label(kind, seconds, get_language())


@lru_cache(maxsize=512)
def _window_label(kind: str, seconds: int | None, language: str | None) -> str:
    # Cached per language: every usage answer names its windows, and gettext is not free.
    if kind == WindowKind.PERIOD:
        return str(_("billing period"))
    seconds = seconds or 0
    if seconds % 86400 == 0:
        return str(_("%(n)s days") % {"n": seconds // 86400}) if seconds != 86400 else str(_("1 day"))
    if seconds % 3600 == 0:
        return str(_("%(n)s hours") % {"n": seconds // 3600}) if seconds != 3600 else str(_("1 hour"))
    return str(_("%(n)s minutes") % {"n": seconds // 60})


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active", _("Active")
    PAST_DUE = "past_due", _("Past due")
    CANCELED = "canceled", _("Canceled")


class Subscription(models.Model):
    """An organization's plan. Periods are derived from the anchor (plans/periods.py), not stored."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="subscription")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    anchor = models.DateTimeField(help_text=_("Start of the first period; every period is anchor + n x months"))
    status = models.CharField(max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE)
    # Paid plans charged by us (billing/services/renewals.py): the end of the last period paid for.
    # Empty for free plans and for plans an admin assigned without a charge, which renewals leave alone.
    paid_through = models.DateTimeField(null=True, blank=True)
    renewal_failures = models.PositiveSmallIntegerField(default=0, help_text=_("Failed renewal charges in a row"))
    past_due_since = models.DateTimeField(null=True, blank=True, help_text=_("First failed renewal of this period"))
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.organization} on {self.plan}"
