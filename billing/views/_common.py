"""What the billing pages share: where Stripe.js comes from (and, with localstripe, the view that serves it)
and its key, the card id format, and the services' sentences that the pages translate."""

from __future__ import annotations

import re

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.translation import gettext_noop

from billing import stripe_gateway
from core.errors import DomainError

PAYMENT_METHOD_ID = re.compile(r"^pm_[A-Za-z0-9_]{1,200}$")

# The customer-facing sentences of billing.stripe_gateway, billing.selectors and billing.services, marked
# here for translation: those modules stay free of gettext, and the pages translate what they say
# (`_(exc.message)`). A sentence with an amount or a currency in it is worded by the page itself.
SERVICE_MESSAGES = (
    # cards and payments (stripe_gateway, services.purchases)
    gettext_noop("Your card was declined."),
    gettext_noop("Your card has insufficient funds."),
    gettext_noop("Your card has expired."),
    gettext_noop("Your card's security code is incorrect."),
    gettext_noop("Your card number is incorrect."),
    gettext_noop("Your card's expiration month is invalid."),
    gettext_noop("Your card's expiration year is invalid."),
    gettext_noop("An error occurred while processing your card. Try again in a moment."),
    gettext_noop("Your bank asks you to confirm this payment."),
    gettext_noop("Your bank did not confirm this payment."),
    gettext_noop("Your card was declined: its spending limit was reached."),
    gettext_noop("The payment was canceled."),
    gettext_noop("The payment details were not accepted. Try another card."),
    gettext_noop("We could not reach our payment provider. Try again in a moment."),
    gettext_noop("Add a card before buying credits."),
    gettext_noop("This card is not on file."),
    gettext_noop("This credit pack is not sold in your organization's currency."),
    # plan changes (services.renewals, selectors.purchase_authentication_secret)
    gettext_noop("Add a card before choosing a paid plan."),
    gettext_noop("A payment for your plan is already in progress."),
    gettext_noop("This payment does not wait for your bank."),
    # auto top-up's rules (services.autotopup)
    gettext_noop("The minimum balance cannot be negative."),
    gettext_noop("The target balance must be more than the minimum balance."),
    gettext_noop("Set a monthly limit for automatic top-ups."),
    gettext_noop(
        "A top-up from the minimum to the target would charge less than our payment provider accepts: "
        "raise the target or lower the minimum."
    ),
    gettext_noop("Add a card before turning on automatic top-up."),
)


def stripe_js_url() -> str:
    # With localstripe, its fake Stripe.js comes through us (see stripe_gateway.local_stripe_js).
    return reverse("stripe_js_local") if getattr(settings, "STRIPE_API_HOST", None) else "https://js.stripe.com/v3/"


def stripe_js_context() -> dict[str, str]:
    """What a page that runs Stripe.js (static/js/payments.js) puts on its host element."""
    return {"stripe_js_url": stripe_js_url(), "stripe_key": stripe_gateway.publishable_key()}


def stripe_js_local(request: HttpRequest) -> HttpResponse:
    try:
        script = stripe_gateway.local_stripe_js()
    except DomainError as exc:
        raise Http404(exc.message) from None
    except OSError:
        return HttpResponse("/* localstripe is not answering */", content_type="text/javascript", status=503)
    return HttpResponse(script, content_type="text/javascript")
