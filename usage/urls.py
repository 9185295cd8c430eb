from django.urls import path

from usage.views import overview, signup, team, usage_page

urlpatterns = [
    path("signup/", signup.signup, name="signup"),
    path("orgs/<int:org_id>/", overview.overview, name="org_overview"),
    path("orgs/<int:org_id>/live/", overview.overview_live, name="org_overview_live"),
    path("orgs/<int:org_id>/usage/", usage_page.usage_page, name="org_usage"),
    path("orgs/<int:org_id>/usage/events.csv", usage_page.events_csv, name="org_events_csv"),
    path("orgs/<int:org_id>/team/", team.team, name="org_team"),
    path("orgs/<int:org_id>/team/invite/", team.team_invite, name="org_team_invite"),
    path("orgs/<int:org_id>/team/<int:membership_id>/role/", team.team_role, name="org_team_role"),
    path("orgs/<int:org_id>/team/<int:membership_id>/remove/", team.team_remove, name="org_team_remove"),
]
