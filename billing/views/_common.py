"""What the billing pages share: where Stripe.js comes from (and, with localstripe, the view that serves it),
the publishable key, the card id format."""

from __future__ import annotations

import re

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse

from billing import stripe_gateway
from core.errors import DomainError

PAYMENT_METHOD_ID = re.compile(r"^pm_[A-Za-z0-9_]{1,200}$")


def stripe_js_url() -> str:
    # With localstripe, its fake Stripe.js comes through us (see stripe_gateway.local_stripe_js).
    return reverse("stripe_js_local") if getattr(settings, "STRIPE_API_HOST", None) else "https://js.stripe.com/v3/"


def stripe_publishable_key() -> str:
    return settings.STRIPE_LIVE_PUBLIC_KEY if settings.STRIPE_LIVE_MODE else settings.STRIPE_TEST_PUBLIC_KEY


def stripe_js_local(request: HttpRequest) -> HttpResponse:
    try:
        script = stripe_gateway.local_stripe_js()
    except DomainError as exc:
        raise Http404(exc.message) from None
    except OSError:
        return HttpResponse("/* localstripe is not answering */", content_type="text/javascript", status=503)
    return HttpResponse(script, content_type="text/javascript")
