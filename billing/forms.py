"""Forms for operators' credit changes (the admin's grant and adjust actions).

They only validate input; billing.services does the change (and validates again).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from billing.models import LotCategory
from core.money import CREDIT_DIGITS, CREDIT_PLACES, minor_units_per_major


class _CreditsFormBase(forms.Form):
    credits = forms.DecimalField(max_digits=CREDIT_DIGITS, decimal_places=CREDIT_PLACES, label=_("Credits"))
    reason = forms.CharField(
        max_length=500,
        label=_("Reason"),
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text=_("Required. Stored on the ledger entry with your name; customers' support will read it."),
    )

    def preview_payload(self) -> dict[str, Any]:
        """What the confirmation fingerprints: the cleaned values, as strings."""
        return {name: "" if value is None else str(value) for name, value in sorted(self.cleaned_data.items())}

    def delta(self) -> Decimal:
        return self.cleaned_data["credits"]


class CreditGrantForm(_CreditsFormBase):
    """A new lot for each organization."""

    category = forms.ChoiceField(choices=LotCategory.choices, initial=LotCategory.PROMOTIONAL, label=_("Category"))
    expires_at = forms.DateTimeField(
        required=False,
        label=_("Expires at (UTC)"),
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text=_("Optional, e.g. 2027-01-31 23:59. Empty: never expires."),
    )
    priority = forms.IntegerField(
        initial=100, min_value=-32768, max_value=32767, label=_("Priority"), help_text=_("Lower is drawn first.")
    )

    field_order = ("credits", "category", "reason", "expires_at", "priority")

    def __init__(self, *args: Any, now: datetime, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.now = now

    def clean_credits(self) -> Decimal:
        credits: Decimal = self.cleaned_data["credits"]
        if credits <= 0:
            raise forms.ValidationError(_("Grant more than zero credits."), code="invalid_credits")
        return credits

    def clean_expires_at(self) -> datetime | None:
        expires_at: datetime | None = self.cleaned_data.get("expires_at")
        if expires_at is not None and expires_at <= self.now:
            raise forms.ValidationError(_("The expiry must be in the future."), code="invalid_expiry")
        return expires_at


class CreditAdjustForm(_CreditsFormBase):
    """A correction: positive adds a promotional lot, negative removes drawable credits."""

    def __init__(self, *args: Any, now: datetime, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.now = now
        self.fields["credits"].help_text = _("Signed: 50 adds credits, -50 removes them.")

    def clean_credits(self) -> Decimal:
        credits: Decimal = self.cleaned_data["credits"]
        if credits == 0:
            raise forms.ValidationError(_("An adjustment of zero changes nothing."), code="invalid_credits")
        return credits


class AutoTopUpForm(forms.Form):
    """The credits page's auto top-up settings; billing.services.autotopup.auto_topup_configure checks
    the rules (target above minimum, a cap that covers a top-up, a card on file)."""

    enabled = forms.BooleanField(required=False, label=_("Turn on automatic top-up"))
    min_balance = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=CREDIT_DIGITS,
        decimal_places=CREDIT_PLACES,
        label=_("Minimum balance (credits)"),
        help_text=_("A top-up starts when your balance falls below this."),
    )
    target_balance = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=CREDIT_DIGITS,
        decimal_places=CREDIT_PLACES,
        label=_("Target balance (credits)"),
        help_text=_("A top-up buys just enough credits to reach this."),
    )
    monthly_cap = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=12,
        decimal_places=2,
        label=_("Monthly limit"),
        help_text=_("The most that automatic top-ups may charge in a calendar month (UTC)."),
    )

    def __init__(self, *args: Any, currency: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.currency = currency.lower()
        self.fields["monthly_cap"].label = _("Monthly limit (%(currency)s)") % {"currency": self.currency.upper()}

    def clean_monthly_cap(self) -> Decimal | None:
        cap: Decimal | None = self.cleaned_data.get("monthly_cap")
        if cap is not None and cap * minor_units_per_major(self.currency) % 1:
            raise forms.ValidationError(
                _("Enter a whole amount of %(currency)s.") % {"currency": self.currency.upper()}, code="invalid_cap"
            )
        return cap

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("enabled"):
            for name in ("min_balance", "target_balance", "monthly_cap"):
                if data.get(name) is None and name not in self.errors:
                    self.add_error(name, _("This field is required."))
        return data

    def monthly_cap_minor(self) -> int | None:
        """The cap in minor units (what the service stores), or None."""
        cap: Decimal | None = self.cleaned_data.get("monthly_cap")
        if cap is None:
            return None
        return int(cap * minor_units_per_major(self.currency))
