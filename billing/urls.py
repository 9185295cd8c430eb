from django.conf import settings
from django.urls import path

from billing.views import _common, auto_topup, buy, cards, credits, plans

urlpatterns = [
    path("stripe-js/local.js", _common.stripe_js_local, name="stripe_js_local"),
    path("orgs/<int:org_id>/credits/", credits.credits_page, name="org_credits"),
    path("orgs/<int:org_id>/credits/buy/", buy.buy, name="org_buy"),
    path("orgs/<int:org_id>/credits/buy/<int:purchase_id>/settle/", buy.buy_settle, name="org_buy_settle"),
    path("orgs/<int:org_id>/cards/setup/", buy.card_setup, name="org_card_setup"),
    path("orgs/<int:org_id>/cards/default/", buy.card_default, name="org_card_default"),
    path("orgs/<int:org_id>/credits/auto-top-up/", auto_topup.auto_topup_save, name="org_auto_topup"),
    path("orgs/<int:org_id>/cards/", cards.cards_page, name="org_cards"),
    path("orgs/<int:org_id>/cards/make-default/", cards.card_make_default, name="org_card_make_default"),
    path("orgs/<int:org_id>/cards/remove/", cards.card_delete, name="org_card_remove"),
    path("orgs/<int:org_id>/plans/", plans.plans_page, name="org_plans"),
    path("orgs/<int:org_id>/plans/change/", plans.plan_change, name="org_plan_change"),
    path(
        "orgs/<int:org_id>/plans/upgrade/<int:purchase_id>/authenticate/",
        plans.plan_authenticate,
        name="org_plan_authenticate",
    ),
    path("orgs/<int:org_id>/plans/upgrade/<int:purchase_id>/settle/", plans.plan_settle, name="org_plan_settle"),
    path(settings.CREDITS_PURCHASE_PATH.strip("/") + "/", credits.purchase_link, name="purchase_link"),
]
