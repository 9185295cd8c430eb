"""Grants, adjustments, expiry and the spend cap: writes to an organization's credits."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db import transaction

from billing.models import CreditAccount, CreditLot, EntryKind, LotCategory, LotSource
from billing.services.book import CreditBook, credit_books_lock
from core.errors import DomainError, NotFound
from core.money import MAX_CREDITS, format_decimal, round_credits


def _book(organization_id: int, now: datetime) -> CreditBook:
    books = credit_books_lock([organization_id], now=now)
    if organization_id not in books:
        raise NotFound("There is no such organization.", code="organization_not_found")
    return books[organization_id]


@transaction.atomic
def credits_grant(
    *,
    organization_id: int,
    credits: Decimal,
    now: datetime,
    category: str = LotCategory.PROMOTIONAL,
    source: str = LotSource.GRANT,
    reason: str = "",
    actor_id: int | None = None,
    expires_at: datetime | None = None,
    effective_at: datetime | None = None,
    priority: int = 100,
    external_ref: str | None = None,
) -> CreditLot:
    """A new lot and its GRANT entry. With `external_ref` (a payment id), granting twice returns the first lot."""
    credits = round_credits(credits)
    if credits <= 0:
        raise DomainError("Credits to grant must be more than zero.", code="invalid_credits")
    if category not in LotCategory.values:
        raise DomainError("Category must be promotional or paid.", code="invalid_category")
    if expires_at is not None and expires_at <= (effective_at or now):
        raise DomainError("The expiry must be in the future.", code="invalid_expiry")
    book = _book(organization_id, now)
    if book.balance + credits >= MAX_CREDITS:
        raise DomainError("This grant would take the balance past the largest amount we store.", code="invalid_credits")
    if external_ref is not None:
        existing = CreditLot.objects.filter(organization_id=organization_id, external_ref=external_ref).first()
        if existing is not None:
            return existing
    lot = CreditLot.objects.create(
        organization_id=organization_id,
        category=category,
        source=source,
        priority=priority,
        granted=credits,
        remaining=credits,
        effective_at=effective_at or now,
        expires_at=expires_at,
        reason=reason,
        actor_id=actor_id,
        external_ref=external_ref,
        created_at=now,
    )
    book.add_lot(lot, reference=f"grant:{external_ref or lot.pk}", reason=reason, actor_id=actor_id)
    book.flush()
    return lot


@transaction.atomic
def credits_adjust(
    *, organization_id: int, credits: Decimal, reason: str, actor_id: int | None, now: datetime
) -> Decimal:
    """A correction by an admin: positive adds a promotional lot, negative removes drawable credits.

    Returns the new balance. A reason is required; the actor is recorded on every entry.
    """
    credits = round_credits(credits)
    if not reason.strip():
        raise DomainError("An adjustment needs a reason.", code="reason_required")
    if credits == 0:
        raise DomainError("An adjustment of zero changes nothing.", code="invalid_credits")
    book = _book(organization_id, now)
    if credits > 0 and book.balance + credits >= MAX_CREDITS:
        raise DomainError(
            "This adjustment would take the balance past the largest amount we store.", code="invalid_credits"
        )
    if credits > 0:
        lot = CreditLot.objects.create(
            organization_id=organization_id,
            category=LotCategory.PROMOTIONAL,
            source=LotSource.ADJUSTMENT,
            granted=credits,
            remaining=credits,
            effective_at=now,
            reason=reason,
            actor_id=actor_id,
            created_at=now,
        )
        book.add_lot(lot, reference=f"adjust:{lot.pk}", reason=reason, actor_id=actor_id, kind=EntryKind.ADJUST)
    else:
        take = -credits
        if take > book.available():
            raise DomainError(
                f"Only {format_decimal(book.available())} credits can be removed now.", code="insufficient_credits"
            )
        book.draw(take, kind=EntryKind.ADJUST, reference="adjust", count_spend=False, reason=reason, actor_id=actor_id)
    book.flush()
    return book.balance


@transaction.atomic
def spend_cap_set(*, organization_id: int, cap: Decimal | None, now: datetime) -> CreditAccount:
    if cap is not None and cap < 0:
        raise DomainError("A spend cap cannot be negative.", code="invalid_cap")
    book = _book(organization_id, now)
    book.set_cap(None if cap is None else round_credits(cap))
    book.flush()
    return book.account


def lots_expire_due(*, now: datetime) -> int:
    """Expire every lot whose time has come, one organization per transaction. Returns how many
    organizations were touched; running it again (or never) changes nothing that the hot path
    would not do lazily."""
    org_ids = list(
        CreditAccount.objects.filter(next_lot_expiry__lte=now).values_list("organization_id", flat=True)[:10_000]
    )
    for org_id in org_ids:
        with transaction.atomic():
            books = credit_books_lock([org_id], now=now)  # expiry runs as the book opens
            for book in books.values():
                book.flush()
    return len(org_ids)
