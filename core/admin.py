"""Admin building blocks shared by every app, and the admin of core's own models.

Changelists must stay fast with 100k rows and more: no full count, related rows joined
(`list_select_related`), `raw_id_fields` instead of selects of every row, ordering by the primary
key, and a search that turns a number into indexed id look-ups instead of scanning text.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode

from core.models import BenchmarkRow, IdempotencyRecord


class LargeTablePaginator(Paginator):
    """On PostgreSQL, an unfiltered list of a big table is counted from the planner's estimate
    (`pg_class.reltuples`), not by COUNT(*) over every row. Filtered lists are counted exactly."""

    estimate_above = 100_000

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if isinstance(qs, QuerySet) and not qs.query.where:
            connection = connections[qs.db]
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [qs.model._meta.db_table]
                    )
                    row = cursor.fetchone()
                if row is not None and row[0] > self.estimate_above:
                    return int(row[0])
        return super().count


class FastChangeListMixin:
    """Defaults for big tables. `id_search_fields`: integer fields a numeric search term matches exactly."""

    show_full_result_count = False
    paginator: ClassVar[type] = LargeTablePaginator
    list_per_page = 50
    id_search_fields: tuple[str, ...] = ("pk",)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        result, may_have_duplicates = super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        term = search_term.strip()
        if term.isdigit() and self.id_search_fields and len(term) < 19:
            by_id = Q()
            for name in self.id_search_fields:
                by_id |= Q(**{name: int(term)})
            result = result | queryset.filter(by_id)
        return result, may_have_duplicates


class ReadOnlyAdmin(FastChangeListMixin, admin.ModelAdmin):
    """View only: rows that only services write (ledgers, events, windows). No add, change or delete."""

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


def admin_link(obj: Model | None, text: str | None = None) -> str:
    """A link to the admin change page of `obj` (or an empty string)."""
    if obj is None:
        return "-"
    meta = obj._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else str(obj))


def admin_id_link(app_label: str, model_name: str, pk: int | None, text: str | None = None) -> str:
    """A link to a change page from a bare id, so a changelist needs no join to show it."""
    if pk is None:
        return "-"
    url = reverse(f"admin:{app_label}_{model_name}_change", args=[pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else f"#{pk}")


def admin_changelist_link(app_label: str, model_name: str, text: str, **filters: object) -> str:
    query = urlencode({key: str(value) for key, value in filters.items()})
    url = reverse(f"admin:{app_label}_{model_name}_changelist")
    return format_html('<a href="{}?{}">{}</a>', url, query, text)


def pretty_json(value: object) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ("id", "scope", "key", "http_status", "created_at")
    search_fields = ("=key", "^scope")
    ordering = ("-id",)
    fields = ("scope", "key", "request_hash", "http_status", "response_pretty", "created_at")
    readonly_fields = fields

    @admin.display(description="response")
    def response_pretty(self, obj: IdempotencyRecord) -> str:
        return pretty_json(obj.response)


@admin.register(BenchmarkRow)
class BenchmarkRowAdmin(ReadOnlyAdmin):
    """Rows written by the benchmark's baseline endpoint (bench/)."""

    list_display = ("id", "note", "created_at")
    search_fields = ("^note",)
    ordering = ("-id",)
