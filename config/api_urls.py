from django.conf import settings
from django.urls import path

from billing.apis import (
    CardDefaultView,
    CardDetailView,
    CardSetupView,
    CardsView,
    GrantView,
    LedgerView,
    OrganizationCreateView,
    PurchasesView,
    SpendCapView,
    SubscriptionView,
)
from core.bench import BenchBaselineView
from plans.apis import KeyVerifyView
from usage.apis import (
    AuthorizeView,
    EntitlementsView,
    ReservationCommitView,
    ReservationCreateView,
    ReservationReleaseView,
    UsageBatchView,
    UsageView,
)

urlpatterns = [
    path("usage", UsageView.as_view(), name="usage"),
    path("usage/batch", UsageBatchView.as_view(), name="usage-batch"),
    path("authorize", AuthorizeView.as_view(), name="authorize"),
    path("reservations", ReservationCreateView.as_view(), name="reservations"),
    path("reservations/<int:reservation_id>/commit", ReservationCommitView.as_view(), name="reservation-commit"),
    path("reservations/<int:reservation_id>/release", ReservationReleaseView.as_view(), name="reservation-release"),
    path("organizations", OrganizationCreateView.as_view(), name="organizations"),
    path("organizations/<int:organization_id>/entitlements", EntitlementsView.as_view(), name="entitlements"),
    path("organizations/<int:organization_id>/ledger", LedgerView.as_view(), name="ledger"),
    path("organizations/<int:organization_id>/grants", GrantView.as_view(), name="grants"),
    path("organizations/<int:organization_id>/subscription", SubscriptionView.as_view(), name="subscription"),
    path("organizations/<int:organization_id>/spend-cap", SpendCapView.as_view(), name="spend-cap"),
    path("organizations/<int:organization_id>/purchases", PurchasesView.as_view(), name="purchases"),
    path("organizations/<int:organization_id>/cards", CardsView.as_view(), name="cards"),
    path("organizations/<int:organization_id>/cards/setup", CardSetupView.as_view(), name="card-setup"),
    path(
        "organizations/<int:organization_id>/cards/<str:payment_method_id>/default",
        CardDefaultView.as_view(),
        name="card-default",
    ),
    path("organizations/<int:organization_id>/cards/<str:payment_method_id>", CardDetailView.as_view(), name="card"),
    path("keys/verify", KeyVerifyView.as_view(), name="keys-verify"),
]
if settings.BENCH_ENDPOINTS:  # bench/: the baseline of `make bench`
    urlpatterns.append(path("bench/baseline", BenchBaselineView.as_view(), name="bench-baseline"))
