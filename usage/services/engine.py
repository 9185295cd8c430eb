"""The decision engine: given locked organizations, decide and apply usage in memory, then write.

One Engine lives inside one transaction. It locks the organizations' credit accounts (in id order,
through billing's CreditBook), loads the windows it needs in one query, decides each request in
order against the in-memory state, and `flush()` writes everything in a handful of statements.
With lock=False it only evaluates (preflight) and must not flush.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Q

from billing.models import EntryKind
from billing.services.autotopup import auto_topup_enqueue_on_commit
from billing.services.book import (
    CreditBook,
    Entry,
    credit_books_read,
    credit_books_send,
    flush_books,
    load_open_lots,
    open_lots_send,
)
from core.money import ZERO, format_decimal, round_credits
from core.sql import (
    Sent,
    Update,
    build_instances,
    columns_of,
    db_datetime,
    in_list,
    in_pipeline,
    insert_rows,
    qn,
    update_rows,
)
from plans.models import WindowKind
from plans.periods import period_bounds
from plans.selectors import AllowanceInfo, Catalogue, MeterInfo, PlanInfo, catalogue
from usage.models import AllowanceWindow, Notice, NoticeKind, Reservation, ReservationStatus
from usage.services.notices import window_fields

THRESHOLDS = (50, 80, 100)  # percent of a window at which owners get a notice


@dataclass(slots=True)
class Slot:
    """One window as the engine sees it; `window.pk` is None until it is first written."""

    allowance: AllowanceInfo
    window: AllowanceWindow
    used_at_load: Decimal
    dirty: bool = False
    used_in_db: Decimal | None = None  # what the row holds now, if it differs from used_at_load
    inserted: bool = False  # written by a pipelined INSERT whose id nobody waited for

    @property
    def written(self) -> Decimal:
        return self.used_at_load if self.used_in_db is None else self.used_in_db

    @property
    def room(self) -> Decimal:
        return max(self.window.limit - self.window.used, ZERO)

    def as_dict(self) -> dict[str, object]:
        w = self.window
        opened = w.pk is not None or w.used > 0
        return {
            "allowance": self.allowance.id,
            "window": self.allowance.label,
            "kind": self.allowance.window_kind,
            "limit": format_decimal(w.limit),
            "used": format_decimal(w.used),
            "remaining": format_decimal(self.room),
            "starts_at": w.start.isoformat() if opened or self.allowance.window_kind == WindowKind.PERIOD else None,
            "resets_at": w.end.isoformat() if opened or self.allowance.window_kind == WindowKind.PERIOD else None,
        }


@dataclass(slots=True)
class OrgState:
    organization_id: int
    book: CreditBook
    plan: PlanInfo | None
    anchor: datetime | None
    tz: str
    balance_at_load: Decimal
    slots: dict[tuple[int, datetime], Slot] = field(default_factory=dict)
    current: dict[int, Slot] = field(default_factory=dict)  # allowance id -> current window


@dataclass(slots=True)
class Evaluation:
    """What a request would take. `allowed` is False with a `reason` when it cannot be covered."""

    meter: MeterInfo
    quantity: Decimal
    slots: list[Slot]
    from_allowance: Decimal
    credits: Decimal  # credits to draw
    allowed: bool
    reason: str = ""  # "limit_reached" or "spend_cap_reached"
    credits_blocked: bool = False
    shortfall: Decimal = ZERO  # partial mode: credits owed that nothing covers


class Engine:
    """Decide usage for locked organizations. `Engine(ids, now=now)` locks and loads at once.

    To read in the same round trip as the lock (inside core.sql.atomic_pipeline()), pass `meters` (the
    meters whose current windows to load) and `with_lots`, and `load=False`; send any other reads
    of the same organizations; then call `load()`. Everything sent after the lock runs after it.
    """

    def __init__(
        self,
        organization_ids: list[int] | set[int],
        *,
        now: datetime,
        lock: bool = True,
        meters: Collection[int] = (),
        with_lots: bool = False,
        load: bool = True,
        catalog: Catalogue | None = None,
    ):
        self.now = now
        self.lock = lock
        # The caller's, when it already looked meters up: one catalogue for the whole request.
        self.catalogue: Catalogue = catalog or catalogue()
        self.books: dict[int, CreditBook] = {}
        self.states: dict[int, OrgState] = {}
        self.notices: list[Notice] = []
        self.expired_holds: list[Reservation] = []
        self._looked_up: set[tuple[int, int]] = set()  # (organization, allowance) whose window was queried
        ids = sorted(set(organization_ids))
        self._sent_books = credit_books_send(ids, lock=lock)
        self._sent_lots = open_lots_send(ids) if with_lots else None
        self._meters = list(meters)
        self._sent_windows = self._windows_send(ids, self._meters) if self._meters else None
        if load:
            self.load()

    def load(self) -> None:
        """Read what __init__ sent (in a pipeline: wait for it, once)."""
        self.books = credit_books_read(self._sent_books, now=self.now, lock=self.lock, lots=self._sent_lots)
        for org_id, book in self.books.items():
            self.states[org_id] = OrgState(
                organization_id=org_id,
                book=book,
                plan=self.catalogue.plans_by_id.get(book.plan_id) if book.plan_id else None,
                anchor=book.anchor,
                tz=book.timezone,
                balance_at_load=book.account.balance,
            )
        if self._sent_windows is not None:
            self._windows_read(self._sent_windows, self._meters)
        self._release_expired_holds()

    # Loading ------------------------------------------------------------------------------

    def state(self, organization_id: int) -> OrgState | None:
        return self.states.get(organization_id)

    def preload(self, pairs: set[tuple[int, int]]) -> None:
        """Load the current windows for (organization, meter) pairs in one query."""
        wanted: dict[int, OrgState] = {}
        allowance_ids: set[int] = set()
        for org_id, meter_id in pairs:
            st = self.states.get(org_id)
            if st is None or st.plan is None:
                continue
            for allowance in self.catalogue.allowances_for(st.plan.id, meter_id):
                if allowance.id not in st.current and (org_id, allowance.id) not in self._looked_up:
                    wanted[org_id] = st
                    allowance_ids.add(allowance.id)
                    self._looked_up.add((org_id, allowance.id))
        if not allowance_ids:
            return
        for window in build_instances(AllowanceWindow, self._windows_sent(list(wanted), list(allowance_ids)).rows()):
            self._take_current(wanted[window.organization_id], window)

    def _windows_send(self, organization_ids: list[int], meter_ids: list[int]) -> Sent | None:
        """The current windows of these meters' allowances, in any plan (the plans are not known
        before the lock's answer; _windows_read keeps those of each organization's plan)."""
        allowance_ids = [a.id for a in self.catalogue.allowances_by_id.values() if a.meter_id in meter_ids]
        if not organization_ids or not allowance_ids:
            return None
        return self._windows_sent(organization_ids, allowance_ids)

    def _windows_sent(self, organization_ids: list[int], allowance_ids: list[int]) -> Sent:
        """The windows of these allowances that have not ended (see _take_current)."""
        by_org, org_params = in_list("organization_id", organization_ids)
        by_allowance, allowance_params = in_list("allowance_id", allowance_ids)
        return Sent(
            f"SELECT {columns_of(AllowanceWindow)} FROM usage_allowancewindow"
            f" WHERE {by_org} AND {by_allowance} AND {qn('end')} > %s",
            [*org_params, *allowance_params, db_datetime(self.now)],
        )

    def _take_current(self, st: OrgState, window: AllowanceWindow) -> None:
        """Make `window` (unended) its allowance's current one if it is: the one that has started;
        for a rolling allowance, failing that, one that starts a moment after our `now`. Requests
        take the lock in any order, so a request that read the clock later may have opened it;
        opening another would overlap it and count the same allowance twice."""
        allowance = self.catalogue.allowances_by_id.get(window.allowance_id)
        if allowance is None:
            return
        held = st.current.get(window.allowance_id)
        started = window.start <= self.now
        soonest_ahead = allowance.window_kind == WindowKind.ROLLING and (
            held is None or self.now < window.start < held.window.start
        )
        if started or soonest_ahead:
            st.current[window.allowance_id] = self._slot_for(st, window)

    def _windows_read(self, sent: Sent, meter_ids: list[int]) -> None:
        rows = build_instances(AllowanceWindow, sent.rows())
        for st in self.states.values():
            if st.plan is None:
                continue
            for meter_id in meter_ids:
                for allowance in self.catalogue.allowances_for(st.plan.id, meter_id):
                    self._looked_up.add((st.organization_id, allowance.id))
        for window in rows:
            owner = self.states.get(window.organization_id)
            if owner is None or (window.organization_id, window.allowance_id) not in self._looked_up:
                continue  # an allowance of another plan
            self._take_current(owner, window)

    def _slot_for(self, st: OrgState, window: AllowanceWindow) -> Slot:
        key = (window.allowance_id, window.start)
        slot = st.slots.get(key)
        if slot is None:
            allowance = self.catalogue.allowances_by_id.get(window.allowance_id)
            if allowance is None:
                raise LookupError(window.allowance_id)
            slot = Slot(allowance=allowance, window=window, used_at_load=window.used)
            st.slots[key] = slot
        return slot

    def current_slots(self, st: OrgState, meter: MeterInfo) -> list[Slot]:
        if st.plan is None:
            return []
        allowances = self.catalogue.allowances_for(st.plan.id, meter.id)
        if any(a.id not in st.current and (st.organization_id, a.id) not in self._looked_up for a in allowances):
            self.preload({(st.organization_id, meter.id)})
        slots = []
        for allowance in allowances:
            slot = st.current.get(allowance.id)
            if slot is None:
                slot = self._open(st, allowance)
            slots.append(slot)
        return slots

    def _open(self, st: OrgState, allowance: AllowanceInfo) -> Slot:
        """A window not yet in the database: written at flush only if something is used in it."""
        if allowance.window_kind == WindowKind.ROLLING and allowance.window_length is not None:
            start, end = self.now, self.now + allowance.window_length
        else:
            assert st.anchor is not None and st.plan is not None
            start, end = period_bounds(anchor=st.anchor, at=self.now, months=st.plan.period_months, tz=st.tz)
        window = AllowanceWindow(
            organization_id=st.organization_id,
            allowance_id=allowance.id,
            start=start,
            end=end,
            limit=allowance.limit,
            used=ZERO,
        )
        slot = Slot(allowance=allowance, window=window, used_at_load=ZERO)
        st.slots[(allowance.id, start)] = slot
        st.current[allowance.id] = slot
        return slot

    # Deciding -----------------------------------------------------------------------------

    def evaluate(self, st: OrgState, meter: MeterInfo, quantity: Decimal, *, partial: bool = False) -> Evaluation:
        """How `quantity` of `meter` would be paid for now. Changes nothing.

        The included part is the smallest room across the meter's windows; the rest costs
        quantity x credits_per_unit, drawn from credits unless the plan blocks that. In partial
        mode (a reservation's commit) whatever cannot be covered becomes a shortfall instead of
        a denial.
        """
        slots = self.current_slots(st, meter)
        room = min((s.room for s in slots), default=ZERO)
        from_allowance = min(quantity, room)
        rest = quantity - from_allowance
        cost = round_credits(rest * meter.credits_per_unit)
        blocked = st.plan is not None and self.catalogue.credits_blocked(st.plan.id, meter.id)
        ev = Evaluation(meter, quantity, slots, from_allowance, cost, True, credits_blocked=blocked)
        if rest == 0 or (cost == 0 and not blocked):
            return ev
        if blocked:
            can = ZERO  # the plan never draws credits for this meter
        else:
            if not st.book.lots_loaded:
                load_open_lots([state.book for state in self.states.values()])  # one query for the batch
            available = st.book.available()
            can = min(cost, available)
            cap_room = st.book.cap_room()
            if cap_room is not None and cap_room < can:
                can = cap_room
                if not partial and available >= cost:
                    ev.allowed, ev.reason = False, "spend_cap_reached"
                    return ev
            if can >= cost:
                return ev
        if partial:
            ev.credits, ev.shortfall = can, cost - can
            return ev
        ev.allowed, ev.reason = False, "limit_reached"
        return ev

    def apply(
        self, st: OrgState, ev: Evaluation, *, kind: str = EntryKind.CONSUME
    ) -> tuple[list[tuple[int, Decimal]], list[Entry]]:
        """Take what `ev` says: allowance from every window, credits from lots. Returns the lots
        drawn and their (unsaved) ledger entries, whose reference the caller fills in."""
        if ev.from_allowance > 0:
            for slot in ev.slots:
                slot.window.used += ev.from_allowance
                slot.dirty = True
        start = len(st.book.entries)
        drawn = st.book.draw(ev.credits, kind=kind) if ev.credits > 0 else []
        return drawn, st.book.entries[start:]

    def windows_when_clear(self, ev: Evaluation) -> datetime | None:
        """When the windows that block this request have all reset."""
        blocking = [s.window.end for s in ev.slots if s.room < ev.quantity]
        return max(blocking) if blocking else None

    # Holds --------------------------------------------------------------------------------

    def release(self, st: OrgState, reservation: Reservation, *, reference: str) -> None:
        """Give back everything a reservation holds (windows and lots)."""
        self._load_held_windows(st, [reservation])
        for item in reservation.held_windows:
            start = datetime.fromisoformat(item["start"])
            slot = st.slots.get((item["allowance"], start))
            if slot is None:  # the window was deleted with its allowance: nothing to give back
                continue
            slot.window.used = max(slot.window.used - Decimal(item["amount"]), ZERO)
            slot.dirty = True
        held = [(int(item["lot"]), Decimal(item["amount"])) for item in reservation.held_lots]
        if held:
            st.book.give_back(held, reference=reference, held_month=reservation.spend_month)

    def _load_held_windows(self, st: OrgState, reservations: list[Reservation]) -> None:
        query = Q()
        missing = False
        for reservation in reservations:
            for item in reservation.held_windows:
                start = datetime.fromisoformat(item["start"])
                if (item["allowance"], start) not in st.slots:
                    query |= Q(allowance_id=item["allowance"], start=start)
                    missing = True
        if not missing:
            return
        for window in AllowanceWindow.objects.filter(query, organization_id=st.organization_id):
            try:
                self._slot_for(st, window)
            except LookupError:
                continue
            if window.start <= self.now < window.end:
                st.current[window.allowance_id] = st.slots[(window.allowance_id, window.start)]

    def _release_expired_holds(self) -> None:
        due = [
            st
            for st in self.states.values()
            if st.book.account.next_hold_expiry is not None and st.book.account.next_hold_expiry <= self.now
        ]
        if not due:
            return
        by_org: dict[int, list[Reservation]] = {}
        for reservation in Reservation.objects.filter(
            organization_id__in=[st.organization_id for st in due], status=ReservationStatus.HELD
        ).order_by("expires_at", "id"):
            by_org.setdefault(reservation.organization_id, []).append(reservation)
        for st in due:
            upcoming = None
            for reservation in by_org.get(st.organization_id, []):
                if reservation.expires_at <= self.now:
                    self.release(st, reservation, reference=f"reservation:{reservation.pk}")
                    reservation.status = ReservationStatus.EXPIRED
                    reservation.settled_at = self.now
                    self.expired_holds.append(reservation)
                elif upcoming is None:
                    upcoming = reservation.expires_at
            st.book.note_hold_expiry(upcoming, replace=True)

    # Notices ------------------------------------------------------------------------------

    def _notices(self) -> None:
        low = Decimal(settings.CREDITS_LOW_THRESHOLD)
        day = self.now.date().isoformat()
        for st in self.states.values():
            for slot in st.slots.values():
                w = slot.window
                # Not `slot.dirty`: flush_windows() may already have cleared it (usage_record_batch does).
                if w.limit <= 0 or w.used <= slot.used_at_load:
                    continue
                for pct in THRESHOLDS:
                    mark = w.limit * pct / 100
                    if slot.used_at_load < mark <= w.used:
                        self.notices.append(
                            Notice(
                                organization_id=st.organization_id,
                                kind=NoticeKind.WINDOW_THRESHOLD,
                                dedupe_key=f"{slot.allowance.id}:{w.start.isoformat()}:{pct}",
                                payload={
                                    "percent": pct,
                                    "meter_id": slot.allowance.meter_id,
                                    **window_fields(slot.allowance.window_kind, slot.allowance.window_seconds),
                                    "limit": format_decimal(w.limit),
                                    "resets_at": w.end.isoformat(),
                                },
                                created_at=self.now,
                            )
                        )
            before, after = st.balance_at_load, st.book.balance
            if before > 0 and after == 0:
                self.notices.append(
                    Notice(
                        organization_id=st.organization_id,
                        kind=NoticeKind.CREDITS_DEPLETED,
                        dedupe_key=day,
                        payload={"balance": "0"},
                        created_at=self.now,
                    )
                )
            elif before >= low > after:
                self.notices.append(
                    Notice(
                        organization_id=st.organization_id,
                        kind=NoticeKind.CREDITS_LOW,
                        dedupe_key=day,
                        payload={"balance": format_decimal(after), "threshold": format_decimal(low)},
                        created_at=self.now,
                    )
                )

    # Writing ------------------------------------------------------------------------------

    def flush_windows(self, *, defer_updates: bool = False) -> Update | None:
        """Write new windows now; set changed ones (absolute values: the lock is held), or with
        defer_updates return that update for the caller to send along with its own statement."""
        new: list[Slot] = []
        rows: list[list[Any]] = []
        for st in self.states.values():
            for slot in st.slots.values():
                if not slot.dirty:
                    continue
                if slot.window.pk is None:
                    if slot.inserted:
                        raise AssertionError("a window inserted in a pipeline changed again in the same engine")
                    new.append(slot)
                elif slot.window.used != slot.written:
                    rows.append([slot.window.pk, slot.window.used])
                slot.used_in_db = slot.window.used
                slot.dirty = False
        if new:
            # Under the account lock nobody else can open these windows; ON CONFLICT would only
            # hide a bug, so a clash raises. In a pipeline nobody waits for the new ids.
            returning = not in_pipeline()
            ids = insert_rows(
                "usage_allowancewindow",
                _WINDOW_COLUMNS,
                [
                    [
                        w.organization_id,
                        w.allowance_id,
                        db_datetime(w.start),
                        db_datetime(w.end),
                        w.limit,
                        w.used,
                        None if w.closed_at is None else db_datetime(w.closed_at),
                    ]
                    for w in (slot.window for slot in new)
                ],
                returning=returning,
            )
            for slot, pk in zip(new, ids if returning else [None] * len(new), strict=True):
                slot.window.pk = pk
                slot.window._state.adding = False
                slot.inserted = pk is None
        update: Update = ("usage_allowancewindow", [("used", "numeric")], rows)
        if defer_updates:
            return update
        update_rows(*update)
        return None

    def flush(self) -> None:
        """Write windows, expired holds, lots, ledger, accounts and notices. Call once, last."""
        if not self.lock:
            raise AssertionError("a preflight engine cannot write")
        self._notices()
        self.flush_windows()
        if self.expired_holds:
            Reservation.objects.bulk_update(self.expired_holds, ["status", "settled_at"])
        flush_books([st.book for st in self.states.values()])
        for st in self.states.values():
            account = st.book.account  # loaded with the lock: no query to read the settings
            if account.auto_topup_enabled and st.balance_at_load >= account.auto_topup_min_balance > st.book.balance:
                auto_topup_enqueue_on_commit(st.organization_id)  # crossed the minimum; the task dedupes
        if self.notices:
            Notice.objects.bulk_create(self.notices, ignore_conflicts=True)


_WINDOW_COLUMNS = [
    ("organization_id", "bigint"),
    ("allowance_id", "bigint"),
    ("start", "timestamptz"),
    ("end", "timestamptz"),
    ("limit", "numeric"),
    ("used", "numeric"),
    ("closed_at", "timestamptz"),
]
