"""Sign up.

It lives here, in the top app, because a new person needs billing's provisioning (a personal
organization with its subscription and credit account), and accounts may not import billing.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from accounts.forms import SignupForm
from accounts.views import SESSION_ORG
from billing.services.provision import user_signup
from core.clock import now as clock_now


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user, org = user_signup(
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
                name=form.cleaned_data["name"],
                now=clock_now(),
            )
        except IntegrityError:  # the same address signed up a moment ago
            form.add_error("email", _("An account with this email address already exists. Log in instead."))
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session[SESSION_ORG] = org.pk
            messages.success(request, _("Welcome! This is your personal organization."))
            return redirect("org_overview", org_id=org.pk)
    return render(request, "accounts/signup.html", {"form": form}, status=400 if form.errors else 200)
