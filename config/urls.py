from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("stripe/", include("djstripe.urls", namespace="djstripe")),
    # The customer dashboard (server-rendered pages with htmx).
    path("", include("accounts.urls")),
    path("", include("usage.urls")),
    path("", include("billing.urls")),
]

# Under /api/ errors keep the JSON envelope {"error": {"code", "message"}}; other paths keep Django's pages.
handler404 = "core.api.not_found_handler"
handler500 = "core.api.server_error_handler"
