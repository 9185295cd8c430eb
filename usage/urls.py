from django.urls import path

from usage import views

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("orgs/<int:org_id>/", views.overview, name="org_overview"),
    path("orgs/<int:org_id>/live/", views.overview_live, name="org_overview_live"),
    path("orgs/<int:org_id>/usage/", views.usage_page, name="org_usage"),
    path("orgs/<int:org_id>/usage/events.csv", views.events_csv, name="org_events_csv"),
    path("orgs/<int:org_id>/team/", views.team, name="org_team"),
    path("orgs/<int:org_id>/team/invite/", views.team_invite, name="org_team_invite"),
    path("orgs/<int:org_id>/team/<int:membership_id>/role/", views.team_role, name="org_team_role"),
    path("orgs/<int:org_id>/team/<int:membership_id>/remove/", views.team_remove, name="org_team_remove"),
]
