"""Stripe webhooks through dj-stripe's endpoint (signature verified, events stored): signed payloads
posted by the test, and real deliveries from localstripe over HTTP to a live server."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from djstripe.models import Event, WebhookEventTrigger

from billing.models import CreditPurchase
from billing.services.purchases import purchase_start, purchases_reconcile
from tests.billing.payment_support import (
    assert_nothing_granted,
    assert_paid_once,
    ledger,
    org_with_card,
    pack,
    paid_at,
    reload,
)
from tests.billing.stripe_fixtures import (
    CARD_DECLINED_ON_CHARGE,
    CARD_REQUIRES_ACTION,
    CARD_SUCCEEDS,
    WEBHOOK_SECRET,
    event_body,
    signed_headers,
    webhook_path,
)
from tests.factories import T0
from tests.invariants import assert_ledger_consistent


def post_event(client, endpoint, event_type, obj, *, event_id=None, secret=WEBHOOK_SECRET):
    body = event_body(event_type, obj, event_id=event_id)
    return client.post(
        webhook_path(endpoint), data=body, content_type="application/json", secure=True, **signed_headers(body, secret)
    ), json.loads(body)["id"]


def requires_action_purchase(localstripe):
    org, _ = org_with_card(localstripe, CARD_REQUIRES_ACTION)
    pack()
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    assert purchase.status == "requires_action"
    return org, purchase


@pytest.mark.django_db
class TestSignedPayloads:
    def test_succeeded_webhook_grants_after_3d_secure(self, client, localstripe, djstripe_endpoint):
        # given a purchase waiting for 3-D Secure, which the customer then completes
        org, purchase = requires_action_purchase(localstripe)
        intent = localstripe.payment_intent_authenticate(purchase.payment_intent_id)
        assert intent["status"] == "succeeded"
        # when Stripe sends payment_intent.succeeded
        response, event_id = post_event(client, djstripe_endpoint, "payment_intent.succeeded", intent)
        # then it is accepted and stored, and the purchase is paid with its lot
        assert response.status_code == 200
        assert Event.objects.filter(id=event_id, type="payment_intent.succeeded").count() == 1
        trigger = WebhookEventTrigger.objects.get()
        assert (trigger.valid, trigger.processed, trigger.exception) == (True, True, "")
        assert_paid_once(org, purchase, now=paid_at(purchase))
        assert (reload(purchase).card_brand, reload(purchase).card_last4) == ("visa", "3155")

    def test_duplicate_and_repeated_deliveries_grant_once(self, client, localstripe, djstripe_endpoint):
        org, purchase = requires_action_purchase(localstripe)
        intent = localstripe.payment_intent_authenticate(purchase.payment_intent_id)
        # when the same event arrives twice, another event for the same payment, and the sweep runs twice
        first, event_id = post_event(client, djstripe_endpoint, "payment_intent.succeeded", intent)
        again, _ = post_event(client, djstripe_endpoint, "payment_intent.succeeded", intent, event_id=event_id)
        other, _ = post_event(client, djstripe_endpoint, "payment_intent.succeeded", intent)
        first_paid_at = paid_at(purchase)
        purchases_reconcile(now=first_paid_at + timedelta(hours=1))
        purchases_reconcile(now=first_paid_at + timedelta(hours=1))
        # then every delivery is acknowledged, and one grant exists
        assert [first.status_code, again.status_code, other.status_code] == [200, 200, 200]
        assert Event.objects.count() == 2
        assert WebhookEventTrigger.objects.count() == 3
        assert_paid_once(org, purchase, now=first_paid_at)

    def test_badly_signed_delivery_is_refused_and_changes_nothing(self, client, localstripe, djstripe_endpoint):
        org, purchase = requires_action_purchase(localstripe)
        intent = localstripe.payment_intent_authenticate(purchase.payment_intent_id)
        # a wrong secret, a tampered body, no signature at all
        wrong, _ = post_event(client, djstripe_endpoint, "payment_intent.succeeded", intent, secret="whsec_wrong")
        body = event_body("payment_intent.succeeded", intent)
        tampered = client.post(
            webhook_path(djstripe_endpoint),
            data=body.replace('"amount": 1000', '"amount": 10'),
            content_type="application/json",
            secure=True,
            **signed_headers(body),
        )
        unsigned = client.post(webhook_path(djstripe_endpoint), data=body, content_type="application/json", secure=True)
        assert [wrong.status_code, tampered.status_code, unsigned.status_code] == [400, 400, 400]
        assert Event.objects.count() == 0
        assert list(WebhookEventTrigger.objects.values_list("valid", flat=True)) == [False, False]
        assert reload(purchase).status == "requires_action"
        assert_nothing_granted(org)

    def test_an_old_signature_is_refused(self, client, localstripe, djstripe_endpoint):
        org, purchase = requires_action_purchase(localstripe)
        intent = localstripe.payment_intent_authenticate(purchase.payment_intent_id)
        body = event_body("payment_intent.succeeded", intent)
        replay = client.post(
            webhook_path(djstripe_endpoint),
            data=body,
            content_type="application/json",
            secure=True,
            **signed_headers(body, timestamp=int(time.time()) - 3600),
        )
        assert replay.status_code == 400
        assert_nothing_granted(org)

    def test_payment_failed_webhook_fails_the_purchase(self, client, localstripe, djstripe_endpoint):
        org, purchase = requires_action_purchase(localstripe)
        intent = localstripe.payment_intent_authenticate(purchase.payment_intent_id, success=False)
        response, _ = post_event(client, djstripe_endpoint, "payment_intent.payment_failed", intent)
        assert response.status_code == 200
        purchase = reload(purchase)
        assert (purchase.status, purchase.failure_code, purchase.failure_message) == (
            "failed",
            "payment_intent_authentication_failure",
            "Your bank did not confirm this payment.",
        )
        assert_nothing_granted(org)

    def test_failure_arriving_after_success_changes_nothing(self, client, localstripe, djstripe_endpoint):
        # given the 4242 purchase, paid synchronously
        org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
        pack()
        purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
        intent = localstripe.payment_intent(purchase.payment_intent_id)
        # when a (reordered) payment_failed and then the succeeded event arrive late
        stale = dict(intent, status="requires_payment_method", last_payment_error={"code": "card_declined"})
        failed, _ = post_event(client, djstripe_endpoint, "payment_intent.payment_failed", stale)
        succeeded, _ = post_event(client, djstripe_endpoint, "payment_intent.succeeded", intent)
        # then both are acknowledged and the purchase stays paid once
        assert [failed.status_code, succeeded.status_code] == [200, 200]
        assert_paid_once(org, purchase)

    def test_declined_0341_webhook_matches_the_purchase_by_metadata(self, client, localstripe, djstripe_endpoint):
        # given the 0341 decline, where localstripe's error carries no payment intent id
        org, _ = org_with_card(localstripe, CARD_DECLINED_ON_CHARGE)
        pack()
        purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
        assert reload(purchase).payment_intent_id is None
        intent = localstripe.request("GET", "/v1/payment_intents")["data"][0]
        assert intent["status"] == "requires_payment_method"
        # when its payment_failed event arrives
        response, _ = post_event(client, djstripe_endpoint, "payment_intent.payment_failed", intent)
        # then the purchase learns its intent id and stays failed, without credits
        assert response.status_code == 200
        purchase = reload(purchase)
        assert (purchase.status, purchase.payment_intent_id, purchase.failure_code) == (
            "failed",
            intent["id"],
            "card_declined",
        )
        assert_nothing_granted(org)

    def test_events_for_payments_that_are_not_ours_are_acknowledged(self, client, localstripe, djstripe_endpoint):
        org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
        customer = org.stripe_customer
        intent = localstripe.request(
            "POST",
            "/v1/payment_intents",
            {
                "amount": 700,
                "currency": "usd",
                "customer": customer.customer_id,
                "payment_method": customer.default_payment_method_id,
                "confirm": "true",
                "off_session": "true",
            },
        )
        response, _ = post_event(client, djstripe_endpoint, "payment_intent.succeeded", intent)
        assert response.status_code == 200
        assert CreditPurchase.objects.count() == 0
        assert_nothing_granted(org)


@pytest.fixture
def webhook_server(transactional_db, settings):
    """A live server of our own: pytest-django's is session-wide and its middleware was built with
    SECURE_SSL_REDIRECT on (localstripe speaks plain HTTP and would be redirected)."""
    from pytest_django.live_server_helper import LiveServer

    settings.SECURE_SSL_REDIRECT = False
    server = LiveServer("localhost")
    yield server
    server.stop()


@pytest.mark.django_db(transaction=True)
def test_localstripe_delivers_a_real_signed_webhook_that_grants(webhook_server, localstripe, djstripe_endpoint):
    """localstripe -> HTTP -> dj-stripe's endpoint on a live server -> purchase_settle."""
    localstripe.webhooks_register(url=webhook_server.url + webhook_path(djstripe_endpoint), secret=WEBHOOK_SECRET)
    try:
        # given a 3-D Secure purchase
        org, purchase = requires_action_purchase(localstripe)
        # when the customer completes authentication, and only the webhook can tell us
        localstripe.payment_intent_authenticate(purchase.payment_intent_id)
        deadline = time.monotonic() + 15
        while reload(purchase).status != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.2)
        # then the delivery arrived signed, was stored, and granted the pack once
        assert Event.objects.filter(type="payment_intent.succeeded").count() == 1
        assert WebhookEventTrigger.objects.filter(valid=True, processed=True).exists()
        assert_paid_once(org, purchase, now=paid_at(purchase))
        # and the sweep afterwards changes nothing
        purchases_reconcile(now=paid_at(purchase) + timedelta(hours=1))
        assert_paid_once(org, purchase, now=paid_at(purchase))
    finally:
        localstripe.webhooks_mute()


# Reconciliation task and every path at once ---------------------------------------------------


@pytest.mark.django_db
def test_the_beat_task_settles_a_purchase_whose_webhook_never_came(localstripe):
    from billing.tasks import purchases_reconcile as task
    from config.celery import app

    # given a 3-D Secure purchase, authenticated, whose webhook was lost
    org, purchase = requires_action_purchase(localstripe)
    localstripe.payment_intent_authenticate(purchase.payment_intent_id)
    # when beat's reconciliation task runs (twice)
    assert "billing.tasks.purchases_reconcile" in {e["task"] for e in app.conf.beat_schedule.values()}
    assert task.apply().get() == 1
    assert task.apply().get() == 0
    # then the pack is granted once
    assert_paid_once(org, purchase, now=paid_at(purchase))


@pytest.mark.django_db(transaction=True)
def test_sync_webhook_and_sweep_all_twice_at_once_grant_once(localstripe, djstripe_endpoint, require_postgres):
    """The browser's return, two webhook deliveries (one a duplicate) and two sweeps, all at once."""
    import threading

    from django.db import connection
    from django.test import Client

    from billing import stripe_gateway as gw
    from billing.services.purchases import purchase_settle

    org, purchase = requires_action_purchase(localstripe)
    intent_data = localstripe.payment_intent_authenticate(purchase.payment_intent_id)
    intent = gw.intent_from_data(intent_data)
    body = event_body("payment_intent.succeeded", intent_data)
    other_body = event_body("payment_intent.succeeded", intent_data)
    barrier = threading.Barrier(6)
    statuses: list[object] = []
    errors: list[BaseException] = []

    def run(job):
        try:
            barrier.wait(timeout=10)
            statuses.append(job())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    def webhook(payload):
        headers = signed_headers(payload)

        def deliver():
            response = Client(headers={"Stripe-Signature": headers["HTTP_STRIPE_SIGNATURE"]}).post(
                webhook_path(djstripe_endpoint), data=payload, content_type="application/json", secure=True
            )
            return response.status_code

        return deliver

    jobs = [
        lambda: reload(purchase_settle(intent=intent, now=T0 + timedelta(minutes=1))).status,
        lambda: reload(purchase_settle(intent=intent, now=T0 + timedelta(minutes=1))).status,
        webhook(body),
        webhook(other_body),
        lambda: purchases_reconcile(now=T0 + timedelta(minutes=10)),
        lambda: purchases_reconcile(now=T0 + timedelta(minutes=10)),
    ]
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(statuses) == 6
    assert statuses.count(200) == 2 and statuses.count("succeeded") == 2
    # one grant, whichever path won
    assert_paid_once(org, purchase, now=paid_at(purchase))


@pytest.mark.django_db
def test_charge_refunded_webhook_claws_back_once_even_after_our_own_record(client, localstripe, djstripe_endpoint):
    from billing.services.purchases import purchase_refund

    # given a paid 4242 purchase, refunded from the admin (which records the clawback itself)
    org, _ = org_with_card(localstripe, CARD_SUCCEEDS)
    pack()
    purchase = purchase_start(organization_id=org.pk, pack_key="pack-100", now=T0).purchase
    purchase_refund(purchase_id=purchase.pk, amount=400, now=T0)
    # and a refund made in Stripe's dashboard, which only the webhook tells us about
    dashboard = localstripe.request(
        "POST", "/v1/refunds", {"payment_intent": purchase.payment_intent_id, "amount": 100}
    )
    charge = localstripe.charges()[0]
    assert [r["amount"] for r in charge["refunds"]["data"]] == [400, 100]
    # when charge.refunded arrives, twice
    first, event_id = post_event(client, djstripe_endpoint, "charge.refunded", charge)
    again, _ = post_event(client, djstripe_endpoint, "charge.refunded", charge)
    # then the dashboard refund is clawed back once, the admin's not again
    assert [first.status_code, again.status_code] == [200, 200]
    assert [(kind, amount, ref) for kind, amount, _, ref in ledger(org)][1:] == [
        ("clawback", Decimal(-40), f"refund:{charge['refunds']['data'][0]['id']}"),
        ("clawback", Decimal(-10), f"refund:{dashboard['id']}"),
    ]
    assert reload(purchase).status == "succeeded"
    assert_ledger_consistent(org.pk)
