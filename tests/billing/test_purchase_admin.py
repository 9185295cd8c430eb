"""The purchases admin: refunds of unused credits through a confirmation page (against a real
localstripe), the reconciliation findings filter, and the billing notices list."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from accounts.models import User
from billing.models import BillingNotice, CreditPurchase
from billing.services import credits_adjust
from billing.services.purchases import purchase_refund_unused, purchase_start, purchase_unused_refund_amount
from core.clock import now as clock_now
from core.errors import Conflict
from tests.billing.payment_support import balance, ledger, org_with_card, pack, reload
from tests.billing.stripe_fixtures import CARD_DECLINED_ON_CHARGE, CARD_SUCCEEDS
from tests.factories import T0
from tests.invariants import assert_ledger_consistent

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:billing_creditpurchase_changelist"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def site(db) -> Client:
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    client.force_login(User.objects.create_superuser("ops@example.com", "pw-123456789"))
    return client


@pytest.fixture
def admin_clock(monkeypatch):
    """The admin reads the time through core.clock: pin it an hour after T0 (the purchases below are
    made at T0, and their lots expire a year later, so the outcome does not depend on today's date)."""
    monkeypatch.setattr("core.clock.now", lambda: T0 + timedelta(hours=1))


def used(org, credits: str) -> None:
    credits_adjust(organization_id=org.pk, credits=-Decimal(credits), reason="used", actor_id=None, now=T0)


def refund_post(site: Client, ids: list[int], **extra: str):
    return site.post(
        reverse(CHANGELIST), {"action": "refund_unused_credits", "_selected_action": [str(i) for i in ids], **extra}
    )


def token(page) -> str:
    match = re.search(r'name="confirm_token" value="([^"]+)"', page.content.decode())
    assert match is not None
    return match.group(1)


def test_unused_refund_amount_is_pro_rata_and_rounded_down(localstripe):
    pack("yen", credits="300", price=3000, currency="jpy")
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    purchase = reload(purchase_start(organization_id=org.pk, pack_key="yen", now=T0).purchase)
    assert purchase_unused_refund_amount(purchase=purchase, now=T0) == 3000
    used(org, "244.45")  # 55.55 unused: 555.5 yen, so 555
    assert purchase_unused_refund_amount(purchase=reload(purchase), now=T0) == 555
    used(org, "55.55")
    assert purchase_unused_refund_amount(purchase=reload(purchase), now=T0) == 0


def test_expired_credits_are_not_refunded_before_the_expiry_sweep(localstripe):
    # given a 30-day pack bought at T0, untouched, whose lot the expiry sweep has not taken yet
    pack("month", credits="100", price=1000, days=30)
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    purchase = reload(purchase_start(organization_id=org.pk, pack_key="month", now=T0).purchase)
    lot = purchase.lot
    assert lot is not None
    assert lot.expires_at == T0 + timedelta(days=30)
    assert lot.remaining == Decimal(100)
    expiry = lot.expires_at

    # then all of it is refundable until the moment it expires, and nothing from then on
    assert purchase_unused_refund_amount(purchase=purchase, now=expiry - timedelta(seconds=1)) == 1000
    assert purchase_unused_refund_amount(purchase=purchase, now=expiry) == 0
    with pytest.raises(Conflict) as refused:
        purchase_refund_unused(purchase_id=purchase.pk, now=expiry + timedelta(days=1))
    assert refused.value.code == "purchase_not_refundable"
    assert localstripe.request("GET", "/v1/refunds")["data"] == []
    lot.refresh_from_db()
    assert lot.remaining == Decimal(100)  # nothing taken back either


def test_the_refund_action_skips_an_expired_lot(localstripe, site, monkeypatch):
    pack("month", credits="100", price=1000, days=30)
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    paid = purchase_start(organization_id=org.pk, pack_key="month", now=T0).purchase
    monkeypatch.setattr("core.clock.now", lambda: T0 + timedelta(days=31))

    preview = refund_post(site, [paid.pk])
    assert preview.status_code == 200
    page = preview.content.decode()
    assert "nothing to refund: skipped" in page
    assert "<td>expired</td>" in page  # its 100 credits are not shown as unused
    assert "None of these purchases has anything left to refund." in page
    assert 'name="confirm_token"' not in page  # nothing to confirm
    assert localstripe.request("GET", "/v1/refunds")["data"] == []


def test_refund_unused_credits_previews_then_refunds_once(localstripe, site, admin_clock):
    pack()
    # given a paid 100-credit pack ($10.00) of which 30 credits were used, and a failed purchase
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    paid = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    used(org, "30")
    other, _ = org_with_card(localstripe, CARD_DECLINED_ON_CHARGE)
    failed = purchase_start(organization_id=other.pk, pack_key="pack-100", now=T0).purchase

    # when the operator picks both and asks for the refund
    preview = refund_post(site, [paid.pk, failed.pk])

    # then a confirmation page shows what will happen, and nothing is refunded yet
    assert preview.status_code == 200
    page = preview.content.decode()
    assert "<strong>7.00 USD</strong>" in page
    assert "nothing to refund: skipped" in page
    assert localstripe.request("GET", "/v1/refunds")["data"] == []

    # when they confirm
    done = refund_post(site, [paid.pk, failed.pk], _confirm="1", confirm_token=token(preview))

    # then Stripe refunded $7.00 for the 70 unused credits, which left the ledger by one clawback
    assert done.status_code == 302
    refunds = localstripe.request("GET", "/v1/refunds")["data"]
    assert [r["amount"] for r in refunds] == [700]
    assert ledger(org)[-1] == ("clawback", Decimal(-70), Decimal(0), f"refund:{refunds[0]['id']}")
    assert balance(org) == 0
    assert reload(paid).status == "succeeded"  # part of it was used: not refunded in full
    assert_ledger_consistent(org.pk)

    # when the same confirmation is posted again (a double click)
    again = refund_post(site, [paid.pk, failed.pk], _confirm="1", confirm_token=token(preview))

    # then nothing more is refunded: there is nothing left, and the page says so
    assert again.status_code == 200
    assert "None of these purchases has anything left to refund." in again.content.decode()
    assert len(localstripe.request("GET", "/v1/refunds")["data"]) == 1


def test_a_forged_or_stale_confirmation_refunds_nothing(localstripe, site, admin_clock):
    pack()
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    paid = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    preview = refund_post(site, [paid.pk])
    assert "<strong>10.00 USD</strong>" in preview.content.decode()
    forged = refund_post(site, [paid.pk], _confirm="1", confirm_token="forged")
    assert forged.status_code == 200
    # a credit used after the preview changes the amount: preview again
    used(org, "1")
    stale = refund_post(site, [paid.pk], _confirm="1", confirm_token=token(preview))
    assert "<strong>9.90 USD</strong>" in stale.content.decode()
    assert localstripe.request("GET", "/v1/refunds")["data"] == []
    # confirming the new preview refunds $9.90
    refund_post(site, [paid.pk], _confirm="1", confirm_token=token(stale))
    assert [r["amount"] for r in localstripe.request("GET", "/v1/refunds")["data"]] == [990]


def test_the_refund_action_needs_the_credits_permission(localstripe, admin_clock):
    pack()
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    paid = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    viewer = User.objects.create_user("viewer@example.com", "pw-123456789", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_creditpurchase"))
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    client.force_login(viewer)
    assert client.get(reverse(CHANGELIST)).status_code == 200
    refund_post(client, [paid.pk], _confirm="1", confirm_token="x")
    assert localstripe.request("GET", "/v1/refunds")["data"] == []
    assert reload(paid).status == "succeeded"


def test_reconciliation_findings_filter(site, db):
    org_pack = pack()
    from tests.billing.payment_support import org_with_owner

    org, _ = org_with_owner()
    now = clock_now()

    def purchase(status: str, code: str = "", age: timedelta = timedelta(0)) -> int:
        return CreditPurchase.objects.create(
            organization=org,
            pack=org_pack,
            credits=Decimal(100),
            amount=1000,
            currency="usd",
            status=status,
            failure_code=code,
            created_at=now - age,
            updated_at=now - age,
        ).pk

    failed = purchase("failed", "card_declined")
    mismatch = purchase("requires_action", "amount_mismatch")
    not_found = purchase("failed", "payment_not_found")
    stuck = purchase("pending", age=timedelta(hours=2))
    purchase("pending", age=timedelta(minutes=2))  # recent: the sweep has not had its turn yet

    def listed(finding: str) -> list[int]:
        response = site.get(reverse(CHANGELIST), {"finding": finding})
        assert response.status_code == 200
        return sorted(p.pk for p in response.context["cl"].result_list)

    assert listed("failed") == sorted([failed, not_found])
    assert listed("amount_mismatch") == [mismatch]
    assert listed("unmatched") == sorted([not_found, stuck])


def test_billing_notices_are_listed_read_only(site, db):
    from tests.billing.payment_support import org_with_owner

    org, _ = org_with_owner()
    notice = BillingNotice.objects.create(
        organization=org, kind="topup_failed", dedupe_key="k", subject="Auto top-up failed", body="b", created_at=T0
    )
    page = site.get(reverse("admin:billing_billingnotice_changelist"))
    assert page.status_code == 200
    assert "Auto top-up failed" in page.content.decode()
    assert site.get(reverse("admin:billing_billingnotice_change", args=[notice.pk])).status_code == 200
    assert site.post(reverse("admin:billing_billingnotice_change", args=[notice.pk]), {}).status_code == 403
