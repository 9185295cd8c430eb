"""What the credits page shows (balance, auto top-up, lots, history, the buy dialog), rendered by its
GET (credits.py) and again, with the form's errors, by the auto top-up form's POST (auto_topup.py)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse

from accounts.views import OrgContext, render_org
from billing.forms import AutoTopUpForm
from billing.models import CreditAccount
from billing.pricing import format_money
from billing.selectors import auto_topup_terms, billing_currency, credit_account, ledger_entries, lots_open
from billing.views.buy import SESSION_LIVE_NOTE, buy_dialog_context
from core.clock import now as clock_now
from core.money import format_decimal

LEDGER_PER_PAGE = 50


def credits_render(
    request: HttpRequest, ctx: OrgContext, *, auto_form: AutoTopUpForm | None = None, status: int = 200
) -> HttpResponse:
    now = clock_now()
    org_id = ctx.organization.pk
    account = credit_account(organization_id=org_id)
    currency = billing_currency(organization_id=org_id)  # read once: the buy dialog and auto top-up need it
    lots = list(lots_open(organization_id=org_id, now=now))
    entries = ledger_entries(organization_id=org_id)
    before = request.GET.get("before", "")
    if before.isdigit() and len(before) < 19:
        entries = entries.filter(id__lt=int(before))
    page = list(entries[: LEDGER_PER_PAGE + 1])
    older = ""
    if len(page) > LEDGER_PER_PAGE:
        page = page[:LEDGER_PER_PAGE]
        older = str(page[-1].pk)
    return render_org(
        request,
        ctx,
        "billing/credits.html",
        {
            "account": account,
            "balance": account.balance if account else 0,
            "lots": lots,
            "entries": page,
            "older": older,
            "is_paged": bool(before),
            **buy_dialog_context(org_id, currency=currency),
            **auto_topup_context(org_id, account, auto_form, known_billing_currency=currency),
            # the refresh after a purchase from the dialog says it in the live status region
            "added": request.session.pop(SESSION_LIVE_NOTE, None) if request.headers.get("HX-Request") else None,
        },
        active="credits",
        status=status,
    )


def auto_topup_context(
    organization_id: int, account: CreditAccount | None, form: AutoTopUpForm | None, *, known_billing_currency: str
) -> dict[str, Any]:
    """The auto top-up section: the saved state, what one top-up charges, the form."""
    terms = auto_topup_terms(
        organization_id=organization_id, account=account, known_billing_currency=known_billing_currency
    )
    if form is None:
        cap = account.auto_topup_monthly_cap_amount if account is not None else None
        initial: dict[str, Any] = {"enabled": bool(account and account.auto_topup_enabled)}
        if account is not None and account.auto_topup_target_balance > 0:
            initial.update(
                min_balance=format_decimal(account.auto_topup_min_balance),
                target_balance=format_decimal(account.auto_topup_target_balance),
            )
        if cap:
            initial["monthly_cap"] = format_money(cap, terms.currency)
        form = AutoTopUpForm(initial=initial, currency=terms.currency)
    return {
        "auto_pack": terms.pack,
        "auto_form": form,
        "auto_enabled": bool(account and account.auto_topup_enabled),
        "auto_quote": terms.quote,
        "auto_currency": terms.currency,
    }
