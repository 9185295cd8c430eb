"""A real localstripe process for the test session, and helpers to talk to it as Stripe.js would.

localstripe pickles its whole store to one fixed file (/tmp/localstripe.pickle) on every write and
reads it back on start; that file is shared with every other localstripe on the machine. The
process started here runs with both turned off (a few lines before its `start()`), so parallel
sessions never read each other's data, and the data is emptied (`DELETE /_config/data`) before
every test that uses it. Webhook registrations live in the process's memory and survive that
flush: `webhooks_register` points them somewhere, `webhooks_mute` turns them off again.

The helpers here use plain HTTP (urllib), not stripe-python: in app code only
billing/stripe_gateway.py imports `stripe`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings

from billing import stripe_gateway

CARD_SUCCEEDS = "4242424242424242"
CARD_DECLINED_ON_ATTACH = "4000000000000002"
CARD_DECLINED_ON_CHARGE = "4000000000000341"
CARD_REQUIRES_ACTION = "4000002500003155"

_RUNNER = """
import sys
import localstripe.resources as resources
resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None
from localstripe.server import start
sys.argv = ["localstripe", "--port", sys.argv[1], "--from-scratch"]
start()
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalStripe:
    url: str
    process: subprocess.Popen[bytes]

    def request(self, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        body = urllib.parse.urlencode(_flatten(data or {})).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {settings.STRIPE_TEST_SECRET_KEY}")
        with urllib.request.urlopen(req, timeout=10) as response:
            text = response.read().decode()
        return json.loads(text) if text.strip().startswith(("{", "[")) else text

    def flush(self) -> None:
        self.request("DELETE", "/_config/data")

    # What Stripe.js does in the browser ------------------------------------------------------

    def payment_method_create(self, number: str) -> str:
        """A card payment method from a raw test card number (Stripe.js's card element)."""
        pm = self.request(
            "POST",
            "/v1/payment_methods",
            {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}},
        )
        return pm["id"]

    def payment_intent_authenticate(self, payment_intent_id: str, *, success: bool = True) -> dict[str, Any]:
        """The 3-D Secure dialog: complete (or fail) the authentication of a requires_action intent."""
        intent = self.request("GET", f"/v1/payment_intents/{payment_intent_id}")
        return self.request(
            "POST",
            f"/v1/payment_intents/{payment_intent_id}/_authenticate",
            {"client_secret": intent["client_secret"], "success": "true" if success else "false"},
        )

    def payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/payment_intents/{payment_intent_id}")

    def charges(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/charges?limit=100")["data"]

    # Webhooks ------------------------------------------------------------------------------------

    def webhooks_register(self, *, url: str, secret: str, hook_id: str = "tests") -> None:
        self.request("POST", f"/_config/webhooks/{hook_id}", {"url": url, "secret": secret})

    def webhooks_mute(self, hook_id: str = "tests") -> None:
        """localstripe cannot forget a webhook: keep it, but for an event type that never happens."""
        self.request(
            "POST",
            f"/_config/webhooks/{hook_id}",
            {"url": "http://127.0.0.1:9/", "secret": "whsec_muted", "events": ["never.happens"]},
        )


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding: card[number]=..., events[0]=..."""
    items: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else key
        if isinstance(value, dict):
            items.extend(_flatten(value, name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                items.append((f"{name}[{i}]", str(item)))
        else:
            items.append((name, str(value)))
    return items


def localstripe_start() -> LocalStripe:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = LocalStripe(url=f"http://127.0.0.1:{port}", process=process)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(server.url + "/js.stripe.com/v3/", timeout=1).close()
            return server
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"localstripe did not start on port {port}") from None
            time.sleep(0.1)


def localstripe_stop(server: LocalStripe) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=5)


@pytest.fixture(scope="session")
def localstripe_session() -> Iterator[LocalStripe]:
    """One localstripe process per test session (per xdist worker), stopped at the end."""
    server = localstripe_start()
    had_host = hasattr(settings, "STRIPE_API_HOST")
    old_host = getattr(settings, "STRIPE_API_HOST", None)
    settings.STRIPE_API_HOST = server.url
    old_base = stripe_gateway.sdk_api_base_set(server.url)  # dj-stripe's own calls use the SDK's global
    try:
        yield server
    finally:
        stripe_gateway.sdk_api_base_set(old_base)
        if had_host:
            settings.STRIPE_API_HOST = old_host
        else:
            del settings.STRIPE_API_HOST
        localstripe_stop(server)


@pytest.fixture
def localstripe(localstripe_session: LocalStripe) -> Iterator[LocalStripe]:
    """localstripe, emptied before the test."""
    localstripe_session.flush()
    yield localstripe_session


# dj-stripe's side: the account, API key and webhook endpoint rows localstripe cannot create ------

WEBHOOK_SECRET = "whsec_tests_0123456789abcdef"


@pytest.fixture
def djstripe_endpoint(db):
    """The djstripe Account (localstripe has no /v1/account), the APIKey linked to it, and a
    WebhookEndpoint row; returns the endpoint (its djstripe_uuid is in the webhook URL)."""
    from djstripe.enums import APIKeyType
    from djstripe.models import Account, APIKey, WebhookEndpoint

    account = Account.objects.create(id="acct_localstripe", livemode=False, stripe_data={"id": "acct_localstripe"})
    APIKey.objects.create(
        type=APIKeyType.secret, secret=settings.STRIPE_TEST_SECRET_KEY, livemode=False, djstripe_owner_account=account
    )
    return WebhookEndpoint.objects.create(
        id=f"we_{uuid.uuid4().hex[:20]}",
        url="http://testserver/stripe/webhook/",
        secret=WEBHOOK_SECRET,
        enabled_events=["*"],
        status="enabled",
        livemode=False,
        djstripe_owner_account=account,
        stripe_data={},
    )


def webhook_path(endpoint: Any) -> str:
    return f"/stripe/webhook/{endpoint.djstripe_uuid}/"


def signed_headers(body: str, secret: str = WEBHOOK_SECRET, *, timestamp: int | None = None) -> dict[str, str]:
    """Stripe's `Stripe-Signature: t=...,v1=...` (HMAC-SHA256 of "t.body")."""
    t = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return {"HTTP_STRIPE_SIGNATURE": f"t={t},v1={signature}"}


def event_body(event_type: str, obj: dict[str, Any], *, event_id: str | None = None) -> str:
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "api_version": "2020-08-27",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
            "data": {"object": obj},
        }
    )
