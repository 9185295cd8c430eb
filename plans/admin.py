"""Admin for the catalogue: products, meters, plans and their allowances.

Every process caches the catalogue (plans/selectors.py); a save here clears this process's cache
at once and again after commit, and the others pick the change up within CATALOGUE_CACHE_SECONDS.
A changed limit applies to windows opened after the change. Subscriptions are in billing/admin.py:
a plan change goes through billing's service, under the organization's lock.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import transaction
from django.db.models import Model, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from core.admin import FastChangeListMixin
from plans.models import Meter, Plan, PlanAllowance, Product
from plans.selectors import catalogue_clear


def _catalogue_changed() -> None:
    catalogue_clear()
    transaction.on_commit(catalogue_clear)


class CatalogueAdminMixin:
    """Clears the catalogue cache after any write through the admin."""

    def save_model(self, request: HttpRequest, obj: Model, form: ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)  # type: ignore[misc]
        _catalogue_changed()

    def save_related(self, request: HttpRequest, form: ModelForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)  # type: ignore[misc]
        _catalogue_changed()

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        super().delete_model(request, obj)  # type: ignore[misc]
        _catalogue_changed()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        super().delete_queryset(request, queryset)  # type: ignore[misc]
        _catalogue_changed()


class MeterInline(admin.TabularInline):
    model = Meter
    extra = 0
    fields = ("key", "name", "unit", "credits_per_unit", "is_active")
    show_change_link = True


@admin.register(Product)
class ProductAdmin(CatalogueAdminMixin, FastChangeListMixin, admin.ModelAdmin):
    list_display = ("id", "key", "name")
    search_fields = ("key", "name")
    ordering = ("key",)
    inlines = (MeterInline,)


@admin.register(Meter)
class MeterAdmin(CatalogueAdminMixin, FastChangeListMixin, admin.ModelAdmin):
    list_display = ("id", "key", "name", "product", "unit", "unit_plural", "credits_per_unit", "is_active")
    list_filter = ("is_active", "product")
    list_select_related = ("product",)
    raw_id_fields = ("product",)
    search_fields = ("key", "name")
    ordering = ("key",)


class PlanAllowanceInline(admin.TabularInline):
    model = PlanAllowance
    extra = 0
    raw_id_fields = ("meter",)
    fields = ("meter", "limit", "window_kind", "window_seconds", "overage")


@admin.register(Plan)
class PlanAdmin(CatalogueAdminMixin, FastChangeListMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "key",
        "name",
        "price_amount",
        "currency",
        "period_months",
        "is_default",
        "is_public",
        "sort_order",
    )
    list_filter = ("is_default", "is_public", "currency")
    search_fields = ("key", "name")
    ordering = ("sort_order", "price_amount")
    inlines = (PlanAllowanceInline,)
