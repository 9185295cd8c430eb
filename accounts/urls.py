from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("password-reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path("password-reset/sent/", views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("password-reset/<uidb64>/<token>/", views.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("password-reset/done/", views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("settings/", views.settings_page, name="settings"),
    path("settings/timezone/", views.timezone_detected, name="timezone_detected"),
    path("settings/language/", views.language_set, name="language_set"),
    path("orgs/<int:org_id>/keys/", views.api_keys, name="org_api_keys"),
    path("orgs/<int:org_id>/keys/<int:key_id>/revoke/", views.api_key_revoke_view, name="org_api_key_revoke"),
    path("orgs/<int:org_id>/notifications/", views.notifications_page, name="org_notifications"),
]
