"""Admin for usage: every row here is written by the engine, so every page is view only."""

from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from core.admin import ReadOnlyAdmin, admin_changelist_link, pretty_json
from usage.models import AllowanceWindow, DailyUsage, Notice, Reservation, RollupCursor, UsageEvent


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = (
        "id", "created_at", "organization", "meter", "kind", "decision", "quantity", "from_allowance",
        "credits_charged", "http_status", "idempotency_key",
    )  # fmt: skip
    # No filter on a column without choices (it would SELECT DISTINCT over every event), and no search by
    # organization name (a join over every event): a number searches the organization id, by index.
    list_filter = ("decision", "kind", "meter", "created_at")
    list_select_related = ("organization", "meter")
    raw_id_fields = ("organization", "meter")
    search_fields = ("=idempotency_key",)
    id_search_fields = ("pk", "organization_id", "user_id")
    ordering = ("-id",)
    fields = (
        "organization", "meter", "kind", "decision", "quantity", "from_allowance", "credits_charged",
        "idempotency_key", "request_hash", "http_status", "user_id", "occurred_at", "created_at",
        "ledger_link", "metadata_pretty", "response_pretty",
    )  # fmt: skip
    readonly_fields = fields

    @admin.display(description=_("response (returned again on a replay)"))
    def response_pretty(self, obj: UsageEvent) -> str:
        return pretty_json(obj.response)

    @admin.display(description=_("metadata"))
    def metadata_pretty(self, obj: UsageEvent) -> str:
        return pretty_json(obj.metadata)

    @admin.display(description=_("ledger entries"))
    def ledger_link(self, obj: UsageEvent) -> str:
        return admin_changelist_link(
            "billing", "ledgerentry", str(_("credits drawn for this event")), q=f"usage:{obj.pk}"
        )


@admin.register(AllowanceWindow)
class AllowanceWindowAdmin(ReadOnlyAdmin):
    list_display = ("id", "organization", "allowance", "start", "end", "used", "limit", "closed_at")
    list_filter = ("allowance__window_kind", ("closed_at", admin.EmptyFieldListFilter), "allowance__meter")
    list_select_related = ("organization", "allowance__plan", "allowance__meter")
    raw_id_fields = ("organization", "allowance")
    search_fields = ("^organization__name",)
    id_search_fields = ("pk", "organization_id")
    ordering = ("-id",)


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = (
        "id", "created_at", "organization", "meter", "status", "quantity", "from_allowance", "credits_held",
        "committed_quantity", "shortfall", "expires_at", "settled_at", "idempotency_key",
    )  # fmt: skip
    list_filter = ("status", "meter", "created_at")
    list_select_related = ("organization", "meter")
    raw_id_fields = ("organization", "meter", "commit_event")
    search_fields = ("=idempotency_key", "^organization__name")
    id_search_fields = ("pk", "organization_id")
    ordering = ("-id",)
    fields = (
        "organization", "meter", "status", "quantity", "from_allowance", "credits_held", "held_windows", "held_lots",
        "spend_month", "expires_at", "idempotency_key", "request_hash", "committed_quantity", "shortfall",
        "commit_event", "created_at", "settled_at", "ledger_link", "response_pretty",
    )  # fmt: skip
    readonly_fields = fields

    @admin.display(description=_("response"))
    def response_pretty(self, obj: Reservation) -> str:
        return pretty_json(obj.response)

    @admin.display(description=_("ledger entries"))
    def ledger_link(self, obj: Reservation) -> str:
        return admin_changelist_link("billing", "ledgerentry", str(_("holds and releases")), q=f"reservation:{obj.pk}")


@admin.register(Notice)
class NoticeAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "organization", "kind", "dedupe_key", "sent_at")
    list_filter = ("kind", ("sent_at", admin.EmptyFieldListFilter), "created_at")
    list_select_related = ("organization",)
    raw_id_fields = ("organization",)
    search_fields = ("=dedupe_key", "^organization__name")
    id_search_fields = ("pk", "organization_id")
    ordering = ("-id",)
    fields = ("organization", "kind", "dedupe_key", "created_at", "sent_at", "payload_pretty")
    readonly_fields = fields

    @admin.display(description=_("payload"))
    def payload_pretty(self, obj: Notice) -> str:
        return pretty_json(obj.payload)


@admin.register(DailyUsage)
class DailyUsageAdmin(ReadOnlyAdmin):
    """A rollup of usage events (usage/rollups.py) for the dashboard's charts."""

    list_display = ("id", "day", "organization", "meter", "quantity", "from_allowance", "credits", "events", "denied")
    list_filter = ("meter", "day")
    list_select_related = ("organization", "meter")
    raw_id_fields = ("organization", "meter")
    search_fields = ("^organization__name",)
    id_search_fields = ("pk", "organization_id")
    ordering = ("-id",)


@admin.register(RollupCursor)
class RollupCursorAdmin(ReadOnlyAdmin):
    list_display = ("name", "last_event_id", "updated_at")
    search_fields = ("name",)
    ordering = ("name",)
