"""What billing emails say (billing.services.notices sends them), in the active language.

Each kind's message is built from the JSON params stored on its BillingNotice, so that it can be written
in each reader's language when it is sent. Services stay free of gettext; this module is their wording.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import dateformat, timezone, translation
from django.utils.translation import gettext as _

from billing import pricing
from billing.models import BillingNoticeKind, CreditPurchase

K = BillingNoticeKind


def billing_notice_text(*, kind: str, params: Mapping[str, Any]) -> tuple[str, str]:
    """Subject and body of a kind's email in the active language, times in the active time zone (the
    reader's, named next to them). ValueError for a kind it has no message for."""
    p = params
    if kind == K.TOPUP_SUCCEEDED:
        values = {
            "credits": _credits(p["credits"]),
            "money": _money(p["amount"], p["currency"]),
            "min": _credits(p["min_balance"]),
            "cap": _money(p["cap_amount"], p["currency"]),
            "card": _card(p),
        }
        subject = _("Auto top-up: %(credits)s credits for %(money)s") % values
        body = "\n\n".join(
            [
                _(
                    "Your balance fell below %(min)s credits, so we bought %(credits)s credits for %(money)s "
                    "with your %(card)s."
                )
                % values,
                _(
                    "Monthly limit for automatic top-ups: %(cap)s. You can turn automatic top-up off on the "
                    "Credits page."
                )
                % values,
            ]
        )
    elif kind == K.TOPUP_FAILED:
        values = {"reason": _reason(p["reason"]), "failures": p["failures"], "max": p["max_failures"]}
        subject = _("Auto top-up failed")
        body = "\n\n".join(
            [
                _("We could not top up your credits: %(reason)s") % values,
                _(
                    "This is failure %(failures)s of %(max)s in a row; after %(max)s, automatic top-up turns "
                    "itself off. Check your card on the Credits page."
                )
                % values,
            ]
        )
    elif kind == K.TOPUP_DISABLED:
        subject = _("Auto top-up is turned off")
        body = _(
            "Automatic top-up failed %(failures)s times in a row, so we turned it off. No more charges will be "
            "tried. Update your card, then turn automatic top-up on again on the Credits page."
        ) % {"failures": p["failures"]}
    elif kind in (K.PLAN_STARTED, K.RENEWAL_SUCCEEDED):
        values = {
            "plan": p["plan"],
            "money": _money(p["amount"], p["currency"]),
            "card": _card(p),
            "start": _day(p["start"]),
            "end": _day(p["end"]),
            "zone": timezone.get_current_timezone_name(),
        }
        if kind == K.PLAN_STARTED:
            subject = _("Welcome to the %(plan)s plan") % values
            body = (
                _(
                    "We charged %(money)s to your %(card)s. Your %(plan)s plan runs from %(start)s to %(end)s "
                    "(%(zone)s), and renews then with the card on file."
                )
                % values
            )
        else:
            subject = _("Your %(plan)s plan is renewed") % values
            body = (
                _("We charged %(money)s to your %(card)s for your %(plan)s plan, from %(start)s to %(end)s (%(zone)s).")
                % values
            )
    elif kind == K.RENEWAL_FAILED:
        values = {
            "plan": p["plan"],
            "money": _money(p["amount"], p["currency"]),
            "reason": _reason(p["reason"]),
            "max": p["max_attempts"],
        }
        subject = _("We could not renew your %(plan)s plan") % values
        if p.get("retry_at"):
            values["when"] = _moment(p["retry_at"])
            body = (
                _(
                    "The renewal of your %(plan)s plan (%(money)s) failed: %(reason)s We will try again on %(when)s. "
                    "After %(max)s failed attempts you move to the free plan. Update your card on the Payment "
                    "methods page."
                )
                % values
            )
        else:  # no attempt left (and no free plan to fall back to)
            body = (
                _(
                    "The renewal of your %(plan)s plan (%(money)s) failed: %(reason)s Update your card to keep "
                    "your plan. After %(max)s failed attempts you move to the free plan. Update your card on the "
                    "Payment methods page."
                )
                % values
            )
    elif kind == K.PLAN_DOWNGRADED:
        values = {
            "plan": p["plan"],
            "failures": p["failures"],
            "reason": _reason(p["reason"]),
            "fallback": p["fallback"],
        }
        subject = _("Your %(plan)s plan has ended") % values
        body = (
            _(
                "We could not renew your %(plan)s plan after %(failures)s attempts (%(reason)s). You are now on the "
                "%(fallback)s plan. Your credits are kept. Choose a paid plan again at any time."
            )
            % values
        )
    else:
        raise ValueError(f"no message for billing notice kind {kind!r}")
    return subject, body


def card_params(purchase: CreditPurchase) -> dict[str, str]:
    """The card a purchase was charged to, as the messages name it (CreditPurchase.card_words, translated)."""
    return {"card_brand": purchase.card_brand or "", "card_last4": purchase.card_last4 or ""}


def _card(p: Mapping[str, Any]) -> str:
    if not p.get("card_last4"):
        return _("card on file")
    return _("%(brand)s ending in %(last4)s") % {"brand": p.get("card_brand") or _("card"), "last4": p["card_last4"]}


def _reason(text: str) -> str:
    # Stored in English as the customer reads it (billing.views._common lists the msgids); gettext("") is the header.
    return _(text) if text else ""


def _is_ja() -> bool:
    return (translation.get_language() or "").startswith("ja")


def _credits(value: str) -> str:
    """ "1234.5" -> "1,234.5" (grouped alike in English and Japanese)."""
    return f"{Decimal(value):,}"


def _money(amount: int, currency: str) -> str:
    """ "16.25 USD" in English; as the dashboard writes it in Japanese ("$16.25", "6,000円")."""
    if _is_ja():
        return pricing.money_display(amount, currency, language=translation.get_language())
    return f"{pricing.format_money(amount, currency)} {currency.upper()}"


def _day(iso: str) -> str:
    """The day of a stored time in the active time zone (the message names the zone)."""
    at = timezone.localtime(datetime.fromisoformat(iso))
    return dateformat.format(at, "Y年n月j日") if _is_ja() else at.strftime("%Y-%m-%d")


def _moment(iso: str) -> str:
    """A stored time in the active time zone, followed by the zone's name: "2026-02-16 21:00 Asia/Tokyo"."""
    at = timezone.localtime(datetime.fromisoformat(iso))
    text = dateformat.format(at, "Y年n月j日 H:i") if _is_ja() else at.strftime("%Y-%m-%d %H:%M")
    return f"{text} {timezone.get_current_timezone_name()}"
