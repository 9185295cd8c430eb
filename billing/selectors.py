from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from billing.models import CreditAccount, CreditLot, CreditPack, LedgerEntry
from billing.services.book import DRAW_ORDER


def credit_account(*, organization_id: int) -> CreditAccount | None:
    return CreditAccount.objects.filter(organization_id=organization_id).first()


def lots_open(*, organization_id: int, now: datetime) -> QuerySet[CreditLot]:
    """Lots with credits left that have not expired, in draw order."""
    return (
        CreditLot.objects.filter(organization_id=organization_id, remaining__gt=0)
        .exclude(expires_at__lte=now)
        .order_by(*DRAW_ORDER)
    )


def ledger_entries(*, organization_id: int) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(organization_id=organization_id).select_related("lot").order_by("-id")


def packs_active() -> QuerySet[CreditPack]:
    return CreditPack.objects.filter(is_active=True)
