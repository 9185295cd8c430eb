"""The only module that talks to Stripe (stripe-python). Everything else gets our own small types
and our own exceptions, worded for customers.

`STRIPE_API_HOST` (when set) points every call at another server: localstripe in tests and `make run`.
Network calls happen here and nowhere else; callers must not hold a database lock while calling.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import stripe
from django.conf import settings

from core.errors import DomainError

# What a customer reads when a card is refused, by Stripe's decline / error code. Reasons that
# would help a fraudster (lost, stolen, fraudulent) read as a plain decline.
DECLINE_MESSAGES = {
    "card_declined": "Your card was declined.",
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "incorrect_number": "Your card number is incorrect.",
    "invalid_expiry_month": "Your card's expiration month is invalid.",
    "invalid_expiry_year": "Your card's expiration year is invalid.",
    "processing_error": "An error occurred while processing your card. Try again in a moment.",
    "authentication_required": "Your bank asks you to confirm this payment.",
    "payment_intent_authentication_failure": "Your bank did not confirm this payment.",
    "card_velocity_exceeded": "Your card was declined: its spending limit was reached.",
}
DEFAULT_DECLINE_MESSAGE = "Your card was declined."


class CardDeclinedError(DomainError):
    """The card was refused (at attach or at charge). `message` is for the customer."""

    status = 402
    code = "card_declined"

    def __init__(self, message: str, *, code: str, payment_intent_id: str | None = None):
        super().__init__(message, code=code)
        self.payment_intent_id = payment_intent_id


class PaymentProviderError(DomainError):
    """Stripe could not be reached or answered with an error that is not the card's fault. The
    outcome of a charge is then unknown: the reconciliation sweep settles it later."""

    status = 503
    code = "payment_provider_unavailable"


class PaymentRequestError(DomainError):
    """Stripe refused the request itself (an unknown payment method, a detached card...)."""

    status = 400
    code = "payment_request_invalid"


@dataclass(frozen=True)
class Card:
    id: str
    brand: str
    last4: str
    exp_month: int | None = None
    exp_year: int | None = None


@dataclass(frozen=True)
class SetupIntent:
    id: str
    client_secret: str
    status: str


@dataclass(frozen=True)
class Intent:
    """A PaymentIntent as we need it. `status` is Stripe's: succeeded, requires_action,
    requires_payment_method (failed), processing, canceled, ..."""

    id: str
    status: str
    amount: int
    currency: str
    client_secret: str | None = None
    customer: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    card_brand: str = ""
    card_last4: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def customer_message(self) -> str | None:
        if self.error_code is None and self.error_message is None:
            return None
        return decline_message(self.error_code)


@dataclass(frozen=True)
class Refund:
    id: str
    amount: int
    currency: str
    status: str
    payment_intent_id: str | None


def decline_message(code: str | None) -> str:
    return DECLINE_MESSAGES.get(code or "", DEFAULT_DECLINE_MESSAGE)


def _secret_key() -> str:
    return settings.STRIPE_LIVE_SECRET_KEY if settings.STRIPE_LIVE_MODE else settings.STRIPE_TEST_SECRET_KEY


def _client() -> stripe.StripeClient:
    host = getattr(settings, "STRIPE_API_HOST", None)
    return stripe.StripeClient(
        _secret_key(),
        base_addresses={"api": host} if host else None,
        # Retries resend the same Idempotency-Key, so a retried charge is never a second charge.
        max_network_retries=2,
    )


def sdk_api_base_set(url: str | None) -> str:
    """Point the SDK's global client (used by dj-stripe's own syncs) at `url`, or back at Stripe.
    Returns the previous value. Our own calls read STRIPE_API_HOST on every call instead."""
    previous = stripe.api_base
    stripe.api_base = url or "https://api.stripe.com"
    return previous


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    try:
        value = obj[key]
    except (KeyError, TypeError, IndexError):
        return default
    return default if value is None else value


def _card(pm: Any) -> Card:
    card = _get(pm, "card", {})
    return Card(
        id=pm["id"],
        brand=_get(card, "brand", ""),
        last4=_get(card, "last4", ""),
        exp_month=_get(card, "exp_month"),
        exp_year=_get(card, "exp_year"),
    )


def intent_from_data(data: Mapping[str, Any] | Any) -> Intent:
    """Our Intent from a PaymentIntent object (an SDK object or a webhook's `data.object`)."""
    error = _get(data, "last_payment_error")
    pm = _get(data, "payment_method")
    brand = last4 = ""
    if pm is not None and not isinstance(pm, str):
        brand, last4 = _get(_get(pm, "card"), "brand", ""), _get(_get(pm, "card"), "last4", "")
    charge = _get(data, "latest_charge")
    if not brand and charge is not None and not isinstance(charge, str):
        details = _get(_get(charge, "payment_method_details"), "card")
        brand, last4 = _get(details, "brand", ""), _get(details, "last4", "")
    customer = _get(data, "customer")
    metadata = _get(data, "metadata", {})
    return Intent(
        id=data["id"],
        status=data["status"],
        amount=int(data["amount"]),
        currency=data["currency"],
        client_secret=_get(data, "client_secret"),
        customer=customer if isinstance(customer, str) or customer is None else _get(customer, "id"),
        error_code=(_get(error, "decline_code") or _get(error, "code")) if error is not None else None,
        error_message=_get(error, "message") if error is not None else None,
        card_brand=brand,
        card_last4=last4,
        metadata={str(k): str(v) for k, v in dict(metadata).items()},
    )


def _translate(exc: stripe.StripeError) -> DomainError:
    if isinstance(exc, stripe.CardError):
        error = exc.error
        code = _get(error, "decline_code") or exc.code or "card_declined"
        intent = _get(error, "payment_intent")
        intent_id = intent if isinstance(intent, str) or intent is None else _get(intent, "id")
        return CardDeclinedError(decline_message(code), code=code, payment_intent_id=intent_id)
    if isinstance(exc, stripe.InvalidRequestError):
        return PaymentRequestError("The payment details were not accepted. Try another card.")
    return PaymentProviderError("We could not reach our payment provider. Try again in a moment.")


# Customers and cards ---------------------------------------------------------------------------


def customer_create(*, email: str, name: str, metadata: Mapping[str, str], idempotency_key: str | None = None) -> str:
    try:
        customer = _client().v1.customers.create(
            params={"email": email, "name": name, "metadata": dict(metadata)},
            options={"idempotency_key": idempotency_key} if idempotency_key else None,
        )
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return customer.id


def setup_intent_create(*, customer: str) -> SetupIntent:
    try:
        intent = _client().v1.setup_intents.create(params={"customer": customer, "usage": "off_session"})
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return SetupIntent(id=intent.id, client_secret=intent.client_secret or "", status=intent.status)


def payment_method_attach(*, payment_method: str, customer: str) -> Card:
    """Attach a card to the customer (a declined card raises CardDeclinedError)."""
    try:
        pm = _client().v1.payment_methods.attach(payment_method, params={"customer": customer})
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return _card(pm)


def payment_method_retrieve(*, payment_method: str) -> tuple[Card, str | None]:
    """The card and the customer it is attached to (None if it is not attached)."""
    try:
        pm = _client().v1.payment_methods.retrieve(payment_method)
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    customer = pm.customer
    return _card(pm), customer if isinstance(customer, str) or customer is None else customer.id


def payment_method_list(*, customer: str) -> list[Card]:
    try:
        page = _client().v1.payment_methods.list(params={"customer": customer, "type": "card", "limit": 100})
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return [_card(pm) for pm in page.data]


def payment_method_detach(*, payment_method: str) -> None:
    try:
        _client().v1.payment_methods.detach(payment_method)
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


# Payments -------------------------------------------------------------------------------------


def payment_intent_create_and_confirm_off_session(
    *,
    amount: int,
    currency: str,
    customer: str,
    payment_method: str,
    idempotency_key: str,
    metadata: Mapping[str, str],
) -> Intent:
    """Charge the card on file now, without the customer present.

    Returns the intent (succeeded, requires_action, processing...). A declined card raises
    CardDeclinedError (with the intent id when Stripe gives one); an unknown outcome raises
    PaymentProviderError.
    """
    try:
        intent = _client().v1.payment_intents.create(
            params={
                "amount": amount,
                "currency": currency,
                "customer": customer,
                "payment_method": payment_method,
                "confirm": True,
                "off_session": True,
                "metadata": dict(metadata),
                "expand": ["payment_method"],
            },
            options={"idempotency_key": idempotency_key},
        )
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return intent_from_data(intent)


def payment_intent_retrieve(*, payment_intent: str) -> Intent:
    try:
        intent = _client().v1.payment_intents.retrieve(payment_intent, params={"expand": ["payment_method"]})
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return intent_from_data(intent)


def payment_intents_recent(*, limit: int = 100) -> list[Intent]:
    """The most recent payment intents (to find one by its metadata when we never saw its id)."""
    try:
        page = _client().v1.payment_intents.list(params={"limit": limit})
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return [intent_from_data(intent) for intent in page.data]


def refund_create(
    *, payment_intent: str, amount: int, idempotency_key: str, metadata: Mapping[str, str] | None = None
) -> Refund:
    try:
        refund = _client().v1.refunds.create(
            params={"payment_intent": payment_intent, "amount": amount, "metadata": dict(metadata or {})},
            options={"idempotency_key": idempotency_key},
        )
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    return refund_from_data(refund, payment_intent_id=payment_intent)


def refund_from_data(data: Any, *, payment_intent_id: str | None = None) -> Refund:
    intent = _get(data, "payment_intent")
    if intent is not None and not isinstance(intent, str):
        intent = _get(intent, "id")
    return Refund(
        id=data["id"],
        amount=int(data["amount"]),
        currency=data["currency"],
        status=_get(data, "status", ""),
        payment_intent_id=intent or payment_intent_id,
    )


def charge_payment_intent_id(*, charge: str) -> str | None:
    """The payment intent a charge belongs to (None for a charge made without one)."""
    try:
        data = _client().v1.charges.retrieve(charge)
    except stripe.StripeError as exc:
        raise _translate(exc) from exc
    intent = _get(data, "payment_intent")
    return intent if isinstance(intent, str) or intent is None else _get(intent, "id")


def publishable_key() -> str:
    """The key Stripe.js in the browser uses (the counterpart of the secret key above)."""
    return settings.STRIPE_LIVE_PUBLIC_KEY if settings.STRIPE_LIVE_MODE else settings.STRIPE_TEST_PUBLIC_KEY


_local_js: dict[str, str] = {}


def local_stripe_js() -> str:
    """localstripe's fake Stripe.js, wrapped in a block (only when STRIPE_API_HOST points at it).

    Its top-level `class Element` would otherwise shadow the DOM's Element for every script on the
    page, and htmx's `instanceof Element` checks would fail after the card step. Real Stripe.js has no
    such class and is loaded from Stripe directly.
    """
    host = getattr(settings, "STRIPE_API_HOST", None)
    if not host:
        raise DomainError("Stripe.js is served by Stripe.", code="not_found", status=404)
    base = host.rstrip("/")
    if base not in _local_js:
        with urllib.request.urlopen(f"{base}/js.stripe.com/v3/", timeout=5) as response:  # noqa: S310
            script = response.read().decode()
        # It finds its server from its own URL, which is now ours: name localstripe instead.
        script = script.replace(
            "const LOCALSTRIPE_BASE_API = (function () {",
            f"const LOCALSTRIPE_BASE_API = {json.dumps(base)};\nconst LOCALSTRIPE_SRC_BASE = (function () {{",
            1,
        )
        _local_js[base] = "{\n" + script + "\n}\n"
    return _local_js[base]
