from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from billing import views as billing_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("stripe/", include("djstripe.urls", namespace="djstripe")),
    path("stripe-js/local.js", billing_views.stripe_js_local, name="stripe_js_local"),
    # The customer dashboard (server-rendered pages with htmx).
    path("", include("accounts.urls")),
    path("", include("usage.urls")),
    path("orgs/<int:org_id>/credits/", billing_views.credits_page, name="org_credits"),
    path("orgs/<int:org_id>/credits/buy/", billing_views.buy, name="org_buy"),
    path("orgs/<int:org_id>/credits/buy/<int:purchase_id>/settle/", billing_views.buy_settle, name="org_buy_settle"),
    path("orgs/<int:org_id>/cards/setup/", billing_views.card_setup, name="org_card_setup"),
    path("orgs/<int:org_id>/cards/default/", billing_views.card_default, name="org_card_default"),
    path("orgs/<int:org_id>/credits/auto-top-up/", billing_views.auto_topup_save, name="org_auto_topup"),
    path("orgs/<int:org_id>/cards/", billing_views.cards_page, name="org_cards"),
    path("orgs/<int:org_id>/cards/make-default/", billing_views.card_make_default, name="org_card_make_default"),
    path("orgs/<int:org_id>/cards/remove/", billing_views.card_delete, name="org_card_remove"),
    path("orgs/<int:org_id>/plans/", billing_views.plans_page, name="org_plans"),
    path("orgs/<int:org_id>/plans/change/", billing_views.plan_change, name="org_plan_change"),
    path(settings.CREDITS_PURCHASE_PATH.strip("/") + "/", billing_views.purchase_link, name="purchase_link"),
]

# Under /api/ errors keep the JSON envelope {"error": {"code", "message"}}; other paths keep Django's pages.
handler404 = "core.api.not_found_handler"
handler500 = "core.api.server_error_handler"
