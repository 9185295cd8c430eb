"""The credit book: an organization's lots and ledger, changed in memory under its lock, then
written in a few statements.

Lock order (every writer of lots, windows or holds follows it): the organization's CreditAccount
row first (`SELECT ... FOR NO KEY UPDATE`, several organizations in id order), then anything else
of that organization. Lots and windows are not locked themselves: nobody writes them without the
account lock. On SQLite, IMMEDIATE transactions serialize all writers instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from django.db import connection

from billing.models import CreditAccount, CreditLot, EntryKind, LotCategory
from core.money import CREDIT_PLACES, MAX_CREDITS, ZERO
from core.sql import (
    Sent,
    build_instances,
    columns_of,
    db_datetime,
    for_no_key_update,
    from_db_datetime,
    in_list,
    in_pipeline,
    insert_rows,
)
from plans.periods import month_start


@dataclass(slots=True)
class Entry:
    """A ledger entry to write (a LedgerEntry row once flushed; `pk` is set then, outside a pipeline)."""

    organization_id: int
    lot_id: int
    kind: str
    amount: Decimal
    balance_after: Decimal
    reference: str
    reason: str
    actor_id: int | None
    created_at: datetime
    pk: int | None = None


def credit_books_lock(organization_ids: Iterable[int], *, now: datetime, lock: bool = True) -> dict[int, CreditBook]:
    """Lock the credit accounts of these organizations, in id order, with their plan, anchor and zone.

    One statement (hand-written: see core/sql.py). The caller must be inside transaction.atomic().
    With lock=False (preflight reads) nothing is locked and nothing may be flushed.
    """
    return credit_books_read(credit_books_send(organization_ids, lock=lock), now=now, lock=lock)


@dataclass(slots=True)
class BooksSent:
    accounts: Sent
    context: Sent


def credit_books_send(organization_ids: Iterable[int], *, lock: bool = True) -> BooksSent | None:
    """Send the statements of credit_books_lock; read them with credit_books_read. Statements
    sent after them (in a pipeline) run once the locks are granted.

    Two statements: the lock, then the plan, anchor and zone. Not one join: a statement that
    waited for a lock still reads the other tables as they were when it started (EvalPlanQual
    re-reads only the locked row), so a plan changed by the transaction it waited for would be
    missed. In a pipeline the second costs no round trip."""
    ids = sorted(set(organization_ids))
    if not ids:
        return None
    where, params = in_list("organization_id", ids)
    sql = f"SELECT {columns_of(CreditAccount)} FROM billing_creditaccount WHERE {where} ORDER BY organization_id"
    if lock:
        sql += for_no_key_update(of="billing_creditaccount")
    accounts = Sent(sql, params)
    where, params = in_list("o.id", ids)
    context = Sent(
        "SELECT o.id, s.plan_id, s.anchor, o.timezone FROM accounts_organization o"
        f" LEFT JOIN plans_subscription s ON s.organization_id = o.id WHERE {where}",
        params,
    )
    return BooksSent(accounts, context)


def credit_books_read(
    sent: BooksSent | None, *, now: datetime, lock: bool = True, lots: Sent | None = None
) -> dict[int, CreditBook]:
    """The books of credit_books_send's accounts; with `lots` (open_lots_send's, sent after the
    lock) their open lots too, so no book queries them again."""
    if sent is None:
        return {}
    accounts = build_instances(CreditAccount, sent.accounts.rows())
    context = {org_id: (plan_id, anchor, timezone) for org_id, plan_id, anchor, timezone in sent.context.rows()}
    open_lots: dict[int, list[CreditLot]] | None = None
    if lots is not None:
        open_lots = {account.organization_id: [] for account in accounts}
        for lot in build_instances(CreditLot, lots.rows()):
            open_lots.setdefault(lot.organization_id, []).append(lot)
    return {
        account.organization_id: CreditBook(
            account,
            now=now,
            locked=lock,
            lots=None if open_lots is None else open_lots[account.organization_id],
            context=context.get(account.organization_id),
        )
        for account in accounts
    }


def open_lots_send(organization_ids: Iterable[int]) -> Sent | None:
    """The open lots (remaining > 0) of these organizations; send it after the accounts' lock."""
    ids = sorted(set(organization_ids))
    if not ids:
        return None
    where, params = in_list("organization_id", ids)
    return Sent(f"SELECT {columns_of(CreditLot)} FROM billing_creditlot WHERE {where} AND is_open", params)


class CreditBook:
    def __init__(
        self,
        account: CreditAccount,
        *,
        now: datetime,
        locked: bool = True,
        lots: list[CreditLot] | None = None,
        context: tuple[int | None, object, str] | None = None,
    ):
        self.account = account
        self.now = now
        self.locked = locked
        # Read right after the lock (credit_books_send): the subscription's plan and anchor, the zone.
        plan_id, anchor, timezone = context or (None, None, None)
        self.plan_id: int | None = plan_id
        self.anchor: datetime | None = from_db_datetime(anchor)
        self.timezone: str = timezone or "UTC"
        self.balance: Decimal = account.balance
        self._lots: list[CreditLot] | None = None if lots is None else sorted(lots, key=_draw_key)
        self._dirty: dict[int, CreditLot] = {}
        self._new_lots: list[CreditLot] = []
        self.entries: list[Entry] = []
        self._account_dirty = False
        self.month: date = month_start(now).date()
        if account.spend_month != self.month:
            account.spend_month = self.month
            account.spend_month_total = ZERO
            self._account_dirty = True
        self._expire_due()

    # Reads ---------------------------------------------------------------------------------

    @property
    def organization_id(self) -> int:
        return self.account.organization_id

    @property
    def spend_cap(self) -> Decimal | None:
        return self.account.monthly_spend_cap

    @property
    def spent_this_month(self) -> Decimal:
        return self.account.spend_month_total

    def lots(self) -> list[CreditLot]:
        """Open lots in draw order (loaded once per transaction)."""
        if self._lots is None:
            if self.balance == 0 and not self._new_lots:
                self._lots = []
            else:
                # Sorted here rather than by DRAW_ORDER in SQL: an organization has few open lots,
                # and the ordering expressions cost more to compile than the sort.
                self._lots = sorted(_open_lots([self.organization_id]), key=_draw_key)
        return self._lots

    @property
    def lots_loaded(self) -> bool:
        return self._lots is not None

    def drawable(self, lot: CreditLot) -> bool:
        return (
            lot.remaining > 0 and lot.effective_at <= self.now and (lot.expires_at is None or lot.expires_at > self.now)
        )

    def available(self) -> Decimal:
        """Credits that can be drawn now (effective, unexpired)."""
        if self.balance == 0:
            return ZERO
        return sum((lot.remaining for lot in self.lots() if self.drawable(lot)), ZERO)

    def cap_room(self) -> Decimal | None:
        if self.spend_cap is None:
            return None
        return max(self.spend_cap - self.spent_this_month, ZERO)

    # Writes (in memory until flush) --------------------------------------------------------

    def _entry(
        self, lot: CreditLot, kind: str, amount: Decimal, reference: str, reason: str = "", actor_id: int | None = None
    ) -> Entry:
        self.balance += amount
        entry = Entry(
            organization_id=self.organization_id,
            lot_id=lot.pk,
            kind=kind,
            amount=amount,
            balance_after=self.balance,
            reference=reference,
            reason=reason,
            actor_id=actor_id,
            created_at=self.now,
        )
        self.entries.append(entry)
        return entry

    def draw(
        self,
        amount: Decimal,
        *,
        kind: str = EntryKind.CONSUME,
        reference: str = "",
        count_spend: bool = True,
        reason: str = "",
        actor_id: int | None = None,
    ) -> list[tuple[int, Decimal]]:
        """Take `amount` from drawable lots in draw order; one entry per lot. Caller checked `available()`."""
        drawn: list[tuple[int, Decimal]] = []
        left = amount
        for lot in self.lots():
            if left <= 0:
                break
            if not self.drawable(lot):
                continue
            take = min(left, lot.remaining)
            lot.remaining -= take
            self._dirty[id(lot)] = lot
            self._entry(lot, kind, -take, reference, reason, actor_id)
            drawn.append((lot.pk, take))
            left -= take
        if left > 0:
            raise AssertionError("draw() past the available credits: check available() first")
        if count_spend and amount > 0:
            # Saturates at the largest storable amount: a month's spend can pass it over many lots,
            # and any cap is below it, so a cap check reads the same.
            self.account.spend_month_total = min(self.account.spend_month_total + amount, SPEND_TOTAL_MAX)
            self._account_dirty = True
        return drawn

    def give_back(self, held: list[tuple[int, Decimal]], *, reference: str, held_month: date | None) -> None:
        """Return credits a hold took, to the lots they came from (RELEASE entries)."""
        by_id = {lot.pk: lot for lot in self.lots()}
        missing = [lot_id for lot_id, _ in held if lot_id not in by_id]
        if missing:  # fully drawn lots are not among the open ones: load them.
            for lot in CreditLot.objects.filter(pk__in=missing):
                by_id[lot.pk] = lot
                self.lots().append(lot)
            self._lots = sorted(self.lots(), key=_draw_key)
        total = ZERO
        for lot_id, amount in held:
            lot = by_id[lot_id]
            lot.remaining += amount
            self._dirty[id(lot)] = lot
            self._entry(lot, EntryKind.RELEASE, amount, reference)
            total += amount
            if lot.expires_at is not None and lot.expires_at <= self.now:
                self._expire_lot(lot)
            elif lot.expires_at is not None and (
                self.account.next_lot_expiry is None or lot.expires_at < self.account.next_lot_expiry
            ):
                # The lot may have been empty when next_lot_expiry was last computed: note it again.
                self.account.next_lot_expiry = lot.expires_at
                self._account_dirty = True
        if held_month == self.month and total > 0:
            self.account.spend_month_total = max(self.account.spend_month_total - total, ZERO)
            self._account_dirty = True

    def add_lot(
        self,
        lot: CreditLot,
        *,
        reference: str,
        reason: str = "",
        actor_id: int | None = None,
        kind: str = EntryKind.GRANT,
    ) -> None:
        """A new lot (already saved) and its GRANT (or ADJUST) entry."""
        self._new_lots.append(lot)
        if self._lots is not None:
            self._lots.append(lot)
            self._lots.sort(key=_draw_key)
        self._entry(lot, kind, lot.granted, reference, reason, actor_id)
        if lot.expires_at is not None and (
            self.account.next_lot_expiry is None or lot.expires_at < self.account.next_lot_expiry
        ):
            self.account.next_lot_expiry = lot.expires_at
        self._account_dirty = True

    def claw_back(self, lot: CreditLot, amount: Decimal, *, reference: str, reason: str = "") -> Decimal:
        """Take back up to `amount` of what is left in this lot (a refund or dispute): one CLAWBACK
        entry. Returns what was taken (0 if the lot is used up: nothing is written)."""
        for open_lot in self.lots():
            if open_lot.pk == lot.pk:
                lot = open_lot  # the instance the book tracks
                break
        take = min(amount, lot.remaining)
        if take <= 0:
            return ZERO
        lot.remaining -= take
        self._dirty[id(lot)] = lot
        self._entry(lot, EntryKind.CLAWBACK, -take, reference, reason)
        return take

    def _expire_lot(self, lot: CreditLot) -> None:
        amount = lot.remaining
        if amount > 0:
            lot.remaining = ZERO
            self._dirty[id(lot)] = lot
            self._entry(lot, EntryKind.EXPIRE, -amount, "expiry")

    def _expire_due(self) -> None:
        """Expire lots whose time has come (lazily, so no balance waits for the sweep)."""
        due = self.account.next_lot_expiry
        if due is None or due > self.now:
            return
        next_expiry: datetime | None = None
        for lot in self.lots():
            if lot.expires_at is None or lot.remaining <= 0:
                continue
            if lot.expires_at <= self.now:
                self._expire_lot(lot)
            elif next_expiry is None or lot.expires_at < next_expiry:
                next_expiry = lot.expires_at
        self.account.next_lot_expiry = next_expiry
        self._account_dirty = True

    def note_hold_expiry(self, expires_at: datetime | None, *, replace: bool = False) -> None:
        current = self.account.next_hold_expiry
        if replace or current is None or (expires_at is not None and expires_at < current):
            self.account.next_hold_expiry = expires_at
            self._account_dirty = True

    def set_cap(self, cap: Decimal | None) -> None:
        self.account.monthly_spend_cap = cap
        self._account_dirty = True

    def flush(self) -> None:
        """Write lots, ledger entries and the account: at most three statements."""
        flush_books([self])


def flush_books(books: Iterable[CreditBook]) -> None:
    """Write what these books changed: dirty lots, new ledger entries and accounts, in three
    statements however many organizations (a batch touches up to a thousand)."""
    lot_rows: list[list[Any]] = []
    entries: list[Entry] = []
    account_rows: list[list[Any]] = []
    for book in books:
        if not book.locked:
            raise AssertionError("flush() needs the account lock")
        lot_rows.extend([lot.pk, lot.remaining] for lot in book._dirty.values())
        book._dirty.clear()
        entries.extend(book.entries)
        book.entries = []
        a = book.account
        if book._account_dirty or book.balance != a.balance:
            a.balance = book.balance
            account_rows.append(
                [
                    a.pk,
                    a.balance,
                    connection.ops.adapt_datefield_value(a.spend_month),
                    a.spend_month_total,
                    _dt(a.next_lot_expiry),
                    _dt(a.next_hold_expiry),
                    a.monthly_spend_cap,
                    db_datetime(book.now),
                ]
            )
            book._account_dirty = False
    # One statement on PostgreSQL: the ledger insert carries the lot and account updates as CTEs.
    # In a pipeline nobody waits for the entries' ids (nothing reads them there).
    returning = not in_pipeline()
    ids = insert_rows(
        "billing_ledgerentry",
        _ENTRY_COLUMNS,
        [
            [
                e.organization_id,
                e.lot_id,
                e.kind,
                e.amount,
                e.balance_after,
                e.reference,
                e.reason,
                e.actor_id,
                db_datetime(e.created_at),
            ]
            for e in entries
        ],
        along=[
            ("billing_creditlot", [("remaining", "numeric")], lot_rows),
            ("billing_creditaccount", _ACCOUNT_COLUMNS_WRITTEN, account_rows),
        ],
        returning=returning,
    )
    if returning:
        for entry, pk in zip(entries, ids, strict=True):
            entry.pk = pk


_NO_EXPIRY = datetime.max.replace(tzinfo=UTC)
# A month's spend saturates here (see CreditBook.draw).
SPEND_TOTAL_MAX = MAX_CREDITS - Decimal(1).scaleb(-CREDIT_PLACES)
_ENTRY_COLUMNS = [
    ("organization_id", "bigint"),
    ("lot_id", "bigint"),
    ("kind", "varchar"),
    ("amount", "numeric"),
    ("balance_after", "numeric"),
    ("reference", "varchar"),
    ("reason", "varchar"),
    ("actor_id", "bigint"),
    ("created_at", "timestamptz"),
]
# The columns the book owns; auto top-up settings on the same row are written elsewhere.
_ACCOUNT_COLUMNS_WRITTEN = [
    ("balance", "numeric"),
    ("spend_month", "date"),
    ("spend_month_total", "numeric"),
    ("next_lot_expiry", "timestamptz"),
    ("next_hold_expiry", "timestamptz"),
    ("monthly_spend_cap", "numeric"),
    ("updated_at", "timestamptz"),
]


def _dt(value: datetime | None) -> object:
    return None if value is None else db_datetime(value)


def load_open_lots(books: Iterable[CreditBook]) -> None:
    """Load the open lots of several books in one query (a batch over many organizations)."""
    pending = {book.organization_id: book for book in books if book._lots is None}
    for book in list(pending.values()):
        if book.balance == 0 and not book._new_lots:
            book._lots = []
            del pending[book.organization_id]
    if not pending:
        return
    found: dict[int, list[CreditLot]] = {org_id: [] for org_id in pending}
    for lot in _open_lots(list(pending)):
        found[lot.organization_id].append(lot)
    for org_id, book in pending.items():
        book._lots = sorted(found[org_id], key=_draw_key)


def _open_lots(organization_ids: list[int]) -> list[CreditLot]:
    sent = open_lots_send(organization_ids)
    return build_instances(CreditLot, sent.rows()) if sent is not None else []


def _draw_key(lot: CreditLot) -> tuple[object, ...]:
    return (
        lot.priority,
        lot.expires_at is None,
        lot.expires_at or _NO_EXPIRY,  # lots without expiry tie here, as NULLs do in DRAW_ORDER
        0 if lot.category == LotCategory.PROMOTIONAL else 1,
        lot.created_at,
        lot.pk,
    )
