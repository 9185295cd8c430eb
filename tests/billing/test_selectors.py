"""The billing reads that more than one caller shares: the currency an organization is billed in, and
what its auto top-up would charge in which currency."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.models import CreditAccount
from billing.selectors import auto_topup_currency, auto_topup_terms, billing_currency, credit_account
from tests.billing.payment_support import pack
from tests.factories import OrganizationFactory, PlanFactory, make_org

pytestmark = pytest.mark.django_db


def test_the_billing_currency_is_the_plans_and_usd_without_a_subscription():
    on_yen = make_org(plan=PlanFactory(currency="jpy"))
    no_plan = OrganizationFactory()
    assert billing_currency(organization_id=on_yen.pk) == "jpy"
    assert billing_currency(organization_id=no_plan.pk) == "usd"


def test_auto_top_up_charges_in_the_currency_saved_with_its_settings_else_the_plans():
    org = make_org(plan=PlanFactory(currency="jpy"))
    account = credit_account(organization_id=org.pk)
    assert auto_topup_currency(organization_id=org.pk, account=account) == "jpy"
    assert auto_topup_currency(organization_id=org.pk, account=None) == "jpy"
    CreditAccount.objects.filter(organization=org).update(auto_topup_currency="usd")
    assert auto_topup_currency(organization_id=org.pk, account=credit_account(organization_id=org.pk)) == "usd"


def test_the_terms_quote_a_top_up_from_the_minimum_at_the_pack_rate_of_the_currency():
    # given 100 credits for ¥1,000 (the yen pack rate) and a yen plan, minimum 50, target 200
    yen = pack("pack-yen", credits="100", price=1000, currency="jpy")
    pack("pack-usd", credits="100", price=1000, currency="usd")
    org = make_org(plan=PlanFactory(currency="jpy"))
    CreditAccount.objects.filter(organization=org).update(
        auto_topup_min_balance=Decimal(50), auto_topup_target_balance=Decimal(200)
    )
    terms = auto_topup_terms(organization_id=org.pk, account=credit_account(organization_id=org.pk))
    # then one top-up buys 150 credits for ¥1,500, priced by the yen pack
    assert terms == ("jpy", yen, (Decimal(150), 1500, "jpy"))


def test_the_terms_have_no_pack_and_no_quote_when_nothing_is_sold_in_the_currency():
    pack("pack-usd", credits="100", price=1000, currency="usd")
    org = make_org(plan=PlanFactory(currency="jpy"))
    CreditAccount.objects.filter(organization=org).update(
        auto_topup_min_balance=Decimal(50), auto_topup_target_balance=Decimal(200)
    )
    terms = auto_topup_terms(organization_id=org.pk, account=credit_account(organization_id=org.pk))
    assert (terms.currency, terms.pack, terms.quote) == ("jpy", None, None)


def test_the_terms_have_no_quote_until_a_minimum_and_a_target_are_set():
    usd = pack("pack-usd", credits="100", price=1000, currency="usd")
    org = make_org(plan=PlanFactory())
    terms = auto_topup_terms(organization_id=org.pk, account=credit_account(organization_id=org.pk))
    assert (terms.currency, terms.pack, terms.quote) == ("usd", usd, None)
