"""`manage.py stripe_local_setup --webhook-url http://HOST:PORT`: wire dj-stripe to localstripe.

localstripe has neither `/v1/account` nor the WebhookEndpoint API, so this creates directly the rows
dj-stripe needs (the Account, the APIKey linked to it, a WebhookEndpoint) and registers the
endpoint's URL and signing secret with localstripe (`POST /_config/webhooks/<id>`). Then the running
service receives localstripe's signed webhooks. Idempotent: run it on every start (localstripe keeps
webhook registrations in memory only); the endpoint's secret and URL path stay the same.
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.urls import reverse

ACCOUNT_ID = "acct_localstripe"
ENDPOINT_ID = "we_localstripe"


class Command(BaseCommand):
    help = "Create dj-stripe's Account, APIKey and WebhookEndpoint rows and register the webhook with localstripe."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--webhook-url",
            required=True,
            help="This site's base URL as localstripe reaches it (http://HOST:PORT); the endpoint path is added",
        )
        parser.add_argument(
            "--stripe-url", default=None, help="localstripe's URL (default: the STRIPE_API_HOST setting)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stripe_url = (options["stripe_url"] or getattr(settings, "STRIPE_API_HOST", "") or "").rstrip("/")
        if not stripe_url:
            raise CommandError("Set STRIPE_API_HOST (or --stripe-url): this command is for localstripe only.")
        if settings.STRIPE_LIVE_MODE:
            raise CommandError("STRIPE_LIVE_MODE is on: this command is for localstripe only.")
        endpoint = endpoint_ensure(options["webhook_url"])
        try:
            register(stripe_url, endpoint_id=endpoint.id, url=endpoint.url, secret=endpoint.secret)
        except (urllib.error.URLError, OSError) as exc:
            raise CommandError(f"localstripe at {stripe_url} did not accept the webhook: {exc}") from exc
        self.stdout.write(f"Stripe webhooks: {endpoint.url}")


@transaction.atomic
def endpoint_ensure(base_url: str) -> Any:
    """The Account, APIKey and WebhookEndpoint rows (created once; the URL follows `base_url`)."""
    from djstripe.enums import APIKeyType
    from djstripe.models import Account, APIKey, WebhookEndpoint

    account, _ = Account.objects.get_or_create(
        id=ACCOUNT_ID, defaults={"livemode": False, "stripe_data": {"id": ACCOUNT_ID}}
    )
    APIKey.objects.update_or_create(
        secret=settings.STRIPE_TEST_SECRET_KEY,
        defaults={"type": APIKeyType.secret, "livemode": False, "djstripe_owner_account": account},
    )
    endpoint = WebhookEndpoint.objects.select_for_update().filter(id=ENDPOINT_ID).first()
    if endpoint is None:
        endpoint = WebhookEndpoint.objects.create(
            id=ENDPOINT_ID,
            url="",
            secret=f"whsec_{secrets.token_hex(24)}",
            enabled_events=["*"],
            status="enabled",
            livemode=False,
            djstripe_owner_account=account,
            stripe_data={},
        )
    url = base_url.rstrip("/") + reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": endpoint.djstripe_uuid})
    if endpoint.url != url:
        endpoint.url = url
        endpoint.save(update_fields=["url"])
    return endpoint


def register(stripe_url: str, *, endpoint_id: str, url: str, secret: str) -> None:
    body = urllib.parse.urlencode({"url": url, "secret": secret}).encode()
    request = urllib.request.Request(f"{stripe_url}/_config/webhooks/{endpoint_id}", data=body, method="POST")
    request.add_header("Authorization", f"Bearer {settings.STRIPE_TEST_SECRET_KEY}")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
