"""With localstripe, its fake Stripe.js reaches the browser through us, wrapped so that its global
`class Element` cannot shadow the DOM's (htmx relies on `instanceof Element`)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from billing.views import stripe_js_url


@pytest.mark.django_db
def test_the_fake_stripe_js_is_served_wrapped_and_talks_to_localstripe(localstripe, settings):
    # Given localstripe is the Stripe in use
    settings.STRIPE_API_HOST = localstripe.url

    # When the page's Stripe.js URL is fetched
    assert stripe_js_url() == reverse("stripe_js_local")
    response = Client().get(stripe_js_url())

    # Then it is localstripe's script, in a block, pointed at localstripe rather than at us
    body = response.content.decode()
    assert response.status_code == 200
    assert response["Content-Type"] == "text/javascript"
    assert body.startswith("{\n") and body.endswith("\n}\n")
    assert f'const LOCALSTRIPE_BASE_API = "{localstripe.url.rstrip("/")}";' in body


@pytest.mark.django_db
def test_with_real_stripe_the_page_loads_stripe_js_from_stripe(settings):
    settings.STRIPE_API_HOST = ""

    assert stripe_js_url() == "https://js.stripe.com/v3/"
    assert Client().get(reverse("stripe_js_local")).status_code == 404
