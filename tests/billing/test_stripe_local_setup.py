"""`manage.py stripe_local_setup` (run by `make run` after localstripe starts): dj-stripe's rows,
created once, and a webhook registration with localstripe that really delivers signed events."""

from __future__ import annotations

import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from djstripe.models import Account, APIKey, Event, WebhookEndpoint

from billing.management.commands.stripe_local_setup import ENDPOINT_ID
from tests.billing.payment_support import assert_paid_once, paid_at, reload
from tests.billing.test_webhooks import requires_action_purchase, webhook_server  # noqa: F401 - a fixture


def run(url: str) -> str:
    out = StringIO()
    call_command("stripe_local_setup", "--webhook-url", url, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_running_twice_keeps_one_set_of_rows_and_the_same_secret(localstripe):
    try:
        first = run("http://127.0.0.1:8000/")
        endpoint = WebhookEndpoint.objects.get()
        second = run("http://127.0.0.1:8000")
        again = WebhookEndpoint.objects.get()
        # then one account, one key linked to it, one endpoint whose uuid and secret did not change
        assert Account.objects.get().id == "acct_localstripe"
        key = APIKey.objects.get()
        assert (key.djstripe_owner_account_id, key.livemode) == ("acct_localstripe", False)
        assert (again.id, again.djstripe_uuid, again.secret) == (ENDPOINT_ID, endpoint.djstripe_uuid, endpoint.secret)
        assert again.secret.startswith("whsec_")
        url = f"http://127.0.0.1:8000/stripe/webhook/{endpoint.djstripe_uuid}/"
        assert again.url == url
        assert first == second == f"Stripe webhooks: {url}\n"
        # a new address (another PORT) moves the same endpoint
        run("http://localhost:9000")
        assert WebhookEndpoint.objects.get().url == f"http://localhost:9000/stripe/webhook/{endpoint.djstripe_uuid}/"
    finally:
        localstripe.webhooks_mute(ENDPOINT_ID)


@pytest.mark.django_db
def test_refused_without_localstripe(settings):
    if hasattr(settings, "STRIPE_API_HOST"):
        del settings.STRIPE_API_HOST
    with pytest.raises(CommandError, match="STRIPE_API_HOST"):
        run("http://127.0.0.1:8000")
    assert WebhookEndpoint.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_localstripe_delivers_to_the_registered_endpoint(webhook_server, localstripe):  # noqa: F811
    try:
        # given the command run against a live server of ours
        run(webhook_server.url)
        # when a 3-D Secure purchase is authenticated, which only the webhook reports
        org, purchase = requires_action_purchase(localstripe)
        localstripe.payment_intent_authenticate(purchase.payment_intent_id)
        deadline = time.monotonic() + 15
        while reload(purchase).status != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.2)
        # then the signed delivery was verified with the endpoint's secret and granted the pack
        assert Event.objects.filter(type="payment_intent.succeeded").count() == 1
        assert_paid_once(org, purchase, now=paid_at(purchase))
    finally:
        localstripe.webhooks_mute(ENDPOINT_ID)
