from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization
from plans.models import CreditField, Meter, PlanAllowance


class AllowanceWindow(models.Model):
    """Usage of one allowance by one organization in one window [start, end).

    Created on first use; `used` is changed only under the organization's credit-account lock.
    `limit` is copied from the allowance when the window opens.
    """

    # Indexed by window_unique_start and window_org_current (organization first).
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="windows", db_index=False)
    allowance = models.ForeignKey(PlanAllowance, on_delete=models.CASCADE, related_name="windows")
    start = models.DateTimeField()
    end = models.DateTimeField()
    limit = CreditField()
    used = CreditField(default=0)
    closed_at = models.DateTimeField(null=True, blank=True, help_text=_("Set by the sweep after the window ends"))

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "allowance", "start"], name="window_unique_start"),
            models.CheckConstraint(condition=Q(used__gte=0), name="window_used_nonnegative"),
            models.CheckConstraint(condition=Q(used__lte=models.F("limit")), name="window_used_le_limit"),
            models.CheckConstraint(condition=Q(end__gt=models.F("start")), name="window_end_after_start"),
        ]
        indexes = [
            models.Index(fields=["organization", "allowance", "end"], name="window_org_current"),
            models.Index(fields=["end"], condition=Q(closed_at__isnull=True), name="window_open_by_end"),
        ]

    def __str__(self) -> str:
        return f"{self.used}/{self.limit} [{self.start:%Y-%m-%d %H:%M}, {self.end:%Y-%m-%d %H:%M})"


class EventKind(models.TextChoices):
    USAGE = "usage", _("Usage")
    COMMIT = "commit", _("Reservation commit")


class Decision(models.TextChoices):
    ALLOWED = "allowed", _("Allowed")
    DENIED = "denied", _("Denied")


class UsageEvent(models.Model):
    """One decision, allowed or denied, with its answer. Never updated.

    `response` is the body returned the first time (without `id`), so a replay returns it again.
    """

    # Indexed by event_org_recent and the unique key (organization first). No index on meter
    # alone: every index is written on each event, and only deleting a meter (PROTECT) asks.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="usage_events", db_index=False
    )
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="events", db_index=False)
    kind = models.CharField(max_length=16, choices=EventKind.choices, default=EventKind.USAGE)
    decision = models.CharField(max_length=16, choices=Decision.choices)
    quantity = CreditField()
    from_allowance = CreditField(default=0)
    credits_charged = CreditField(default=0)
    idempotency_key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=32)
    http_status = models.PositiveSmallIntegerField()
    response = models.JSONField()
    metadata = models.JSONField(default=dict, blank=True)
    user_id = models.BigIntegerField(null=True, blank=True, help_text=_("Who acted, as told by the caller"))
    occurred_at = models.DateTimeField()
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            # Per kind: a commit's event key ("reservation:<id>") cannot clash with a client's usage key.
            models.UniqueConstraint(fields=["organization", "kind", "idempotency_key"], name="event_unique_kind_key"),
        ]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="event_org_recent"),
            models.Index(fields=["organization", "meter", "-created_at"], name="event_org_meter_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.decision} {self.quantity} {self.meter_id} @ {self.created_at:%Y-%m-%d %H:%M:%S}"


class ReservationStatus(models.TextChoices):
    HELD = "held", _("Held")
    COMMITTED = "committed", _("Committed")
    RELEASED = "released", _("Released")
    EXPIRED = "expired", _("Expired")
    DENIED = "denied", _("Denied")


class Reservation(models.Model):
    """A hold on allowance and credits for a long job; committed, released, or expired once."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="reservations")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="reservations")
    status = models.CharField(max_length=16, choices=ReservationStatus.choices, default=ReservationStatus.HELD)
    quantity = CreditField(help_text=_("Units held"))
    from_allowance = CreditField(default=0)
    credits_held = CreditField(default=0)
    # What is held where: [{"allowance": id, "start": iso, "amount": "..."}] and [{"lot": id, "amount": "..."}].
    held_windows = models.JSONField(default=list)
    held_lots = models.JSONField(default=list)
    spend_month = models.DateField(null=True, blank=True)
    expires_at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=32)
    response = models.JSONField()
    committed_quantity = CreditField(null=True, blank=True)
    shortfall = CreditField(null=True, blank=True, help_text=_("Credits the commit owed that nothing could cover"))
    commit_event = models.OneToOneField(UsageEvent, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "idempotency_key"], name="reservation_unique_key"),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="reservation_quantity_positive"),
            models.CheckConstraint(
                condition=Q(from_allowance__gte=0) & Q(credits_held__gte=0), name="reservation_holds_nonnegative"
            ),
        ]
        indexes = [
            models.Index(fields=["expires_at"], condition=Q(status="held"), name="reservation_held_expiry"),
            models.Index(fields=["organization", "-created_at"], name="reservation_org_recent"),
        ]

    def __str__(self) -> str:
        return f"Reservation #{self.pk} ({self.status})"


class NoticeKind(models.TextChoices):
    WINDOW_THRESHOLD = "window_threshold", _("Allowance threshold reached")
    ALLOWANCE_RESET = "allowance_reset", _("Allowance reset")
    CREDITS_LOW = "credits_low", _("Credits low")
    CREDITS_DEPLETED = "credits_depleted", _("Credits depleted")


class Notice(models.Model):
    """Something to tell an organization's owners; created once per dedupe key, sent once."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="notices")
    kind = models.CharField(max_length=32, choices=NoticeKind.choices)
    dedupe_key = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "kind", "dedupe_key"], name="notice_unique"),
        ]
        indexes = [
            models.Index(fields=["created_at"], condition=Q(sent_at__isnull=True), name="notice_unsent"),
            models.Index(fields=["organization", "-created_at"], name="notice_org_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} for {self.organization_id}"


class DailyUsage(models.Model):
    """Allowed usage of one meter by one organization on one day (in the organization's time zone).

    A rollup of UsageEvent, written only by usage.rollups (never on the usage hot path), so the
    dashboard's charts read 30 rows instead of scanning events. It lags the events by a few minutes.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="daily_usage")
    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="daily_usage")
    day = models.DateField()
    quantity = CreditField(default=0)  # meter units of allowed events
    from_allowance = CreditField(default=0)  # meter units covered by the plan
    credits = CreditField(default=0)  # credits charged
    events = models.PositiveIntegerField(default=0)  # allowed events
    denied = models.PositiveIntegerField(default=0)  # denied events

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "meter", "day"], name="daily_usage_unique_day"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.meter_id} {self.day}: {self.quantity}"


class RollupCursor(models.Model):
    """How far a rollup has read: every event with id <= last_event_id is counted exactly once."""

    name = models.CharField(max_length=64, unique=True)
    last_event_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at event {self.last_event_id}"
