from decimal import Decimal

import pytest

from billing.services import credits_grant
from tests.factories import T0, AllowanceFactory, make_org
from usage.services import UsageInput, usage_record


@pytest.mark.django_db
def test_allowance_then_credits_then_denied():
    allowance = AllowanceFactory(limit=Decimal("2"))
    org = make_org(plan=allowance.plan)
    credits_grant(organization_id=org.pk, credits=Decimal("5"), now=T0)

    def use(key: str, qty: str):
        return usage_record(
            item=UsageInput(
                organization_id=org.pk, meter=allowance.meter.key, quantity=Decimal(qty), idempotency_key=key
            ),
            now=T0,
        )

    first = use("a", "2")
    assert first.status == 201
    assert first.body["from_allowance"] == "2"
    assert first.body["credits_charged"] == "0"
    second = use("b", "1")
    assert second.status == 201
    assert second.body["credits_charged"] == "5"
    assert second.body["credits"]["balance"] == "0"
    third = use("c", "1")
    assert third.status == 402
    assert third.body["error"]["code"] == "limit_reached"
