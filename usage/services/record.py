"""Record usage (single and batch) and preflight it.

On PostgreSQL the database decides first (usage.services.fast: one statement for one event, a few
for a batch); what it leaves comes back undecided and unwritten, and the engine (usage.services.engine)
decides it, in the same transaction for a batch. Elsewhere (SQLite) the engine decides everything.

Idempotency: each event carries a key unique per organization. Inside the locked transaction the
stored events for the keys are read; a key seen before with the same request hash replays the stored
status and body, with another hash it is refused (422). Denied decisions are stored too. Two
requests with one key cannot both pass the check: they lock the same account.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from accounts.models import Role
from accounts.selectors import membership_role
from billing.services.autotopup import auto_topup_enqueue_on_commit
from billing.services.book import Entry
from core.money import ZERO, format_decimal
from core.sql import Sent, Update, atomic_pipeline, db_datetime, in_list, insert_rows
from plans.periods import month_start
from plans.selectors import Catalogue, catalogue
from usage.messages import limit_reached_message, spend_cap_message
from usage.models import Decision, EventKind
from usage.services import fast
from usage.services.engine import Engine, Evaluation, OrgState


@dataclass(slots=True)
class UsageInput:
    organization_id: int
    meter: str
    quantity: Decimal
    idempotency_key: str
    occurred_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    user_id: int | None = None


class Outcome:
    """An answer: HTTP status and body. A body the database wrote (usage.services.fast) comes as JSON
    text, `raw`, parsed only if `body` is read: the API sends the text as it is."""

    __slots__ = ("_body", "raw", "replayed", "status")

    def __init__(
        self, status: int, body: dict[str, Any] | None = None, replayed: bool = False, *, raw: str | None = None
    ):
        self.status = status
        self._body = body
        self.replayed = replayed
        self.raw = raw

    @property
    def body(self) -> dict[str, Any]:
        if self._body is None:
            self._body = json.loads(self.raw) if self.raw is not None else {}
            self.raw = None  # the dict is the answer now: a change made to it is sent
        return self._body

    @body.setter
    def body(self, value: dict[str, Any]) -> None:
        self._body, self.raw = value, None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return (self.status, self.body, self.replayed) == (other.status, other.body, other.replayed)

    def __repr__(self) -> str:
        return f"Outcome({self.status}, {self.body!r}, replayed={self.replayed})"


def request_hash(item: UsageInput, kind: str = "usage") -> str:
    raw = json.dumps(
        [
            kind,
            item.meter,
            format_decimal(item.quantity),
            item.occurred_at.isoformat() if item.occurred_at else None,
            item.metadata,
            item.user_id,
        ],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    ).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def not_found(organization_id: int) -> Outcome:
    return Outcome(404, error_body("organization_not_found", f"There is no organization {organization_id}."))


def unknown_meter(meter: str) -> Outcome:
    return Outcome(400, error_body("meter_not_found", f"There is no active meter {meter!r}."))


def key_reused() -> Outcome:
    return Outcome(
        422,
        error_body(
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request. Use a new key for a new operation.",
        ),
    )


def purchase_url(organization_id: int) -> str:
    return f"{settings.PUBLIC_BASE_URL}{settings.CREDITS_PURCHASE_PATH}?organization={organization_id}"


def decision_fields(st: OrgState, ev: Evaluation, *, drawn: list[tuple[int, Decimal]]) -> dict[str, Any]:
    return {
        "organization": st.organization_id,
        "meter": ev.meter.key,
        "quantity": format_decimal(ev.quantity),
        "from_allowance": format_decimal(ev.from_allowance if ev.allowed else Decimal(0)),
        "credits_charged": format_decimal(ev.credits if ev.allowed else Decimal(0)),
        "windows": [slot.as_dict() for slot in ev.slots],
        "lots": [{"lot": lot_id, "credits": format_decimal(amount)} for lot_id, amount in drawn],
        "credits": {"balance": format_decimal(st.book.balance)},
        "plan": st.plan.key if st.plan else None,
    }


def denial(
    engine: Engine,
    st: OrgState,
    ev: Evaluation,
    *,
    user_id: int | None,
    now: datetime,
    roles: dict[tuple[int, int], str] | None = None,
) -> dict[str, Any]:
    """The 402 body: an error worded for the plan and the caller's role, plus the state that caused it.
    `roles` caches the callers' roles across a batch (each is one query, while the lock is held)."""
    role: str = Role.OWNER
    if user_id is not None:
        key = (st.organization_id, user_id)
        cached = roles.get(key) if roles is not None else None
        if cached is None:
            cached = membership_role(organization_id=st.organization_id, user_id=user_id) or Role.MEMBER
            if roles is not None:
                roles[key] = cached
        role = cached
    plan_name = st.plan.name if st.plan else "current"
    resets_at: datetime | None
    if ev.reason == "spend_cap_reached":
        resets_at = _next_month(now)
        message = spend_cap_message(cap=format_decimal(st.book.spend_cap or Decimal(0)), role=role, resets_at=resets_at)
    else:
        resets_at = engine.windows_when_clear(ev)
        message = limit_reached_message(
            meter_name=ev.meter.name,
            plan_name=plan_name,
            plan_is_free=bool(st.plan and st.plan.is_free),
            role=role,
            resets_at=resets_at,
            credits_blocked=ev.credits_blocked,
        )
    error = {
        "code": ev.reason,
        "message": message,
        "resets_at": resets_at.isoformat() if resets_at else None,
        "purchase_url": purchase_url(st.organization_id),
        "role": role,
    }
    return {"error": error, "decision": Decision.DENIED, **decision_fields(st, ev, drawn=[])}


_EVENT_COLUMNS = [
    ("organization_id", "bigint"),
    ("meter_id", "bigint"),
    ("kind", "varchar"),
    ("decision", "varchar"),
    ("quantity", "numeric"),
    ("from_allowance", "numeric"),
    ("credits_charged", "numeric"),
    ("idempotency_key", "varchar"),
    ("request_hash", "varchar"),
    ("http_status", "smallint"),
    ("response", "jsonb"),
    ("metadata", "jsonb"),
    ("user_id", "bigint"),
    ("occurred_at", "timestamptz"),
    ("created_at", "timestamptz"),
]


@dataclass(slots=True)
class NewEvent:
    """A usage event to insert (a UsageEvent row; a plain object: a batch builds a thousand)."""

    organization_id: int
    meter_id: int
    kind: str
    decision: str
    quantity: Decimal
    from_allowance: Decimal
    credits_charged: Decimal
    idempotency_key: str
    request_hash: str
    http_status: int
    response: dict[str, Any]
    metadata: dict[str, Any]
    user_id: int | None
    occurred_at: datetime
    created_at: datetime
    pk: int | None = None


def insert_events(events: list[NewEvent], *, along: list[Update], ids: list[int] | None = None) -> None:
    """Insert new usage events in one statement (see core.sql.insert_rows), with the window
    updates riding along, and set the events' ids: `ids` reserved beforehand (event_ids_send),
    so nothing waits for the insert's answer, or else returned by it."""
    if ids is not None:
        ids = ids[: len(events)]
        for event, pk in zip(events, ids, strict=True):
            event.pk = pk
    returned = insert_rows(
        "usage_usageevent",
        _EVENT_COLUMNS if ids is None else [("id", "bigint"), *_EVENT_COLUMNS],
        [
            [
                *([] if ids is None else [e.pk]),
                e.organization_id,
                e.meter_id,
                e.kind,
                e.decision,
                e.quantity,
                e.from_allowance,
                e.credits_charged,
                e.idempotency_key,
                e.request_hash,
                e.http_status,
                json.dumps(e.response),
                json.dumps(e.metadata),
                e.user_id,
                db_datetime(e.occurred_at),
                db_datetime(e.created_at),
            ]
            for e in events
        ],
        along=along,
        returning=ids is None,
    )
    if ids is None:
        for event, pk in zip(events, returned, strict=True):
            event.pk = pk


def event_ids_send(count: int) -> Sent | None:
    """Reserve `count` usage event ids from the table's sequence (PostgreSQL), so the event and
    ledger inserts can go without waiting for each other; an id left unused is only a gap."""
    if connection.vendor != "postgresql" or count <= 0:
        return None
    return Sent("SELECT nextval(pg_get_serial_sequence('usage_usageevent', 'id')) FROM generate_series(1, %s)", [count])


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    request_hash: str
    http_status: int
    response: dict[str, Any]


def stored_events_send(*, pairs: set[tuple[int, str]]) -> Sent | None:
    """The usage events already recorded under these (organization, key) pairs (one statement; on
    the hot path, sent after the organizations' lock). Read with stored_events_read.

    On PostgreSQL the pairs are joined as arrays, one index probe each: `key = ANY(...)` on the
    unique index's last column is only a filter there (PostgreSQL 15), which reads every event of
    the organization."""
    if not pairs:
        return None
    columns = "id, organization_id, idempotency_key, request_hash, http_status, response"
    if len(pairs) == 1:
        [(organization_id, key)] = pairs
        return Sent(
            f"SELECT {columns} FROM usage_usageevent WHERE organization_id = %s AND kind = %s AND idempotency_key = %s",
            [organization_id, EventKind.USAGE.value, key],
        )
    if connection.vendor == "postgresql":
        orgs, keys = zip(*pairs, strict=True)
        return Sent(
            "SELECT e.id, e.organization_id, e.idempotency_key, e.request_hash, e.http_status, e.response"
            " FROM UNNEST(%s::bigint[], %s::text[]) AS k(organization_id, idempotency_key)"
            " JOIN usage_usageevent e ON e.organization_id = k.organization_id AND e.kind = %s"
            " AND e.idempotency_key = k.idempotency_key",
            [list(orgs), list(keys), EventKind.USAGE.value],
        )
    by_org, org_params = in_list("organization_id", sorted({org for org, _ in pairs}))
    by_key, key_params = in_list("idempotency_key", sorted({key for _, key in pairs}))
    return Sent(
        f"SELECT {columns} FROM usage_usageevent WHERE {by_org} AND kind = %s AND {by_key}",
        [*org_params, EventKind.USAGE.value, *key_params],
    )


def stored_events_read(sent: Sent | None) -> dict[tuple[int, str], StoredEvent]:
    rows = sent.rows() if sent is not None else []
    return {
        (org_id, key): StoredEvent(pk, digest, status, json.loads(body) if isinstance(body, str | bytes) else body)
        for pk, org_id, key, digest, status, body in rows
    }


def _next_month(now: datetime) -> datetime:
    start = month_start(now)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def _with_id(event_id: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"id": event_id, **body}


ORGS_PER_TRANSACTION = 200  # a batch over more organizations commits in groups of this many


def usage_record(*, item: UsageInput, now: datetime) -> Outcome:
    """Record one usage event: in one statement when the database can decide it (usage.services.fast),
    else by the engine."""
    digest, catalog = request_hash(item), catalogue()
    if fast.fast_path_enabled():
        answer = fast.record_one(item=item, digest=digest, catalog=catalog, now=now)
        if answer is not None:
            return _outcome(item.organization_id, answer)
    return _engine_group([item], [digest], now=now, catalog=catalog)[0]


def usage_record_batch(*, items: list[UsageInput], now: datetime) -> list[Outcome]:
    """Decide and record every item, in order. One outcome per item.

    An organization's events are decided in the batch's order and committed together. A batch over
    more than ORGS_PER_TRANSACTION organizations commits them in groups, in ascending ids: batches
    over the same organizations then follow each other group by group, instead of one waiting for the
    whole of the other, and no lock is held longer than a group takes. Every event carries its own
    idempotency key, so a retry of a batch that failed half-way replays what was committed and
    records the rest.
    """
    if not items:
        return []
    digests = [request_hash(item) for item in items]  # before the lock: less work while it is held
    catalog = catalogue()
    org_ids = sorted({item.organization_id for item in items})
    if len(org_ids) <= ORGS_PER_TRANSACTION:
        return _record_group(items, digests, now=now, catalog=catalog)
    positions: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        positions.setdefault(item.organization_id, []).append(index)
    outcomes: list[Outcome] = [Outcome(0, {})] * len(items)  # every slot is filled below
    for start in range(0, len(org_ids), ORGS_PER_TRANSACTION):
        indexes = sorted(i for org_id in org_ids[start : start + ORGS_PER_TRANSACTION] for i in positions[org_id])
        group = _record_group([items[i] for i in indexes], [digests[i] for i in indexes], now=now, catalog=catalog)
        for index, outcome in zip(indexes, group, strict=True):
            outcomes[index] = outcome
    return outcomes


def _record_group(items: list[UsageInput], digests: list[str], *, now: datetime, catalog: Catalogue) -> list[Outcome]:
    """Decide and record these items (of few enough organizations) in one transaction: in the
    database where it can (usage.services.fast), the rest by the engine, in the same transaction."""
    if not fast.fast_path_enabled():
        return _engine_group(items, digests, now=now, catalog=catalog)
    with transaction.atomic():
        answers, balances = fast.record_many(items=items, digests=digests, catalog=catalog, now=now)
        rest = [index for index, answer in enumerate(answers) if answer is None]
        decided = (
            _engine_group(
                [items[i] for i in rest], [digests[i] for i in rest], now=now, catalog=catalog, balances_before=balances
            )
            if rest
            else []
        )
    outcomes: list[Outcome] = []
    by_engine = iter(decided)
    for item, answer in zip(items, answers, strict=True):
        outcomes.append(next(by_engine) if answer is None else _outcome(item.organization_id, answer))
    return outcomes


def _outcome(organization_id: int, answer: fast.Answer) -> Outcome:
    if answer.topup:
        auto_topup_enqueue_on_commit(organization_id)  # the balance crossed the minimum; the task dedupes
    return Outcome(answer.status, replayed=answer.replayed, raw=answer.body)


def _engine_group(
    items: list[UsageInput],
    digests: list[str],
    *,
    now: datetime,
    catalog: Catalogue,
    balances_before: dict[int, Decimal] | None = None,
) -> list[Outcome]:
    """Decide and record these items (of few enough organizations) by the engine, in one transaction.
    `balances_before`: the organizations' balances before the batch, when the database decided its
    first events (usage.services.fast): the engine's notices and auto top-up compare with those."""
    meters_by_key = catalog.meters_by_key
    meter_ids = {meter.id for item in items if (meter := meters_by_key.get(item.meter)) is not None}
    org_ids = sorted({item.organization_id for item in items})
    # Three exchanges with PostgreSQL: BEGIN (a savepoint inside _record_group's transaction); the
    # lock with every read (sent together, they run in order once the lock is granted); every write
    # with the COMMIT (core.sql.atomic_pipeline).
    with atomic_pipeline():
        engine = Engine(org_ids, now=now, meters=meter_ids, with_lots=True, load=False, catalog=catalog)
        sent_stored = stored_events_send(pairs={(i.organization_id, i.idempotency_key) for i in items})
        sent_ids = event_ids_send(len(items))
        engine.load()
        for org_id, balance in (balances_before or {}).items():
            if (st := engine.state(org_id)) is not None:
                st.balance_at_load = balance
        stored = stored_events_read(sent_stored)
        event_ids = [row[0] for row in sent_ids.rows()] if sent_ids is not None else None
        outcomes: list[Outcome] = []
        pending: list[tuple[Outcome, NewEvent, list[Entry]]] = []
        seen: dict[tuple[int, str], tuple[str, Outcome]] = {}  # keys first used in this batch
        roles: dict[tuple[int, int], str] = {}  # (organization, user) -> role, for denials
        repeats: list[tuple[int, Outcome]] = []  # (index, first outcome) for a key repeated in the batch
        for item, digest in zip(items, digests, strict=True):
            st = engine.state(item.organization_id)
            if st is None:
                outcomes.append(not_found(item.organization_id))
                continue
            key = (item.organization_id, item.idempotency_key)
            previous = stored.get(key)
            if previous is not None:
                if previous.request_hash != digest:
                    outcomes.append(key_reused())
                else:
                    outcomes.append(Outcome(previous.http_status, _with_id(previous.id, previous.response), True))
                continue
            if key in seen:
                first_hash, first = seen[key]
                if first_hash != digest:
                    outcomes.append(key_reused())
                else:
                    repeats.append((len(outcomes), first))
                    outcomes.append(first)  # replaced below, once the first has its id
                continue
            meter = meters_by_key.get(item.meter)
            if meter is None:
                outcomes.append(unknown_meter(item.meter))
                continue
            ev = engine.evaluate(st, meter, item.quantity)
            entries: list[Entry] = []
            if ev.allowed:
                drawn, entries = engine.apply(st, ev)
                status, body = 201, {"decision": Decision.ALLOWED, **decision_fields(st, ev, drawn=drawn)}
            else:
                status, body = 402, denial(engine, st, ev, user_id=item.user_id, now=now, roles=roles)
            event = NewEvent(
                organization_id=st.organization_id,
                meter_id=meter.id,
                kind=EventKind.USAGE,
                decision=Decision.ALLOWED if ev.allowed else Decision.DENIED,
                quantity=item.quantity,
                from_allowance=ev.from_allowance if ev.allowed else ZERO,
                credits_charged=ev.credits if ev.allowed else ZERO,
                idempotency_key=item.idempotency_key,
                request_hash=digest,
                http_status=status,
                response=body,
                metadata=item.metadata,
                user_id=item.user_id,
                occurred_at=item.occurred_at or now,
                created_at=now,
            )
            outcome = Outcome(status, body)
            seen[key] = (digest, outcome)
            outcomes.append(outcome)
            pending.append((outcome, event, entries))
        # Write: windows and events first (events get ids), then ledger entries that name them.
        windows = engine.flush_windows(defer_updates=True)
        insert_events([event for _, event, _ in pending], along=[windows] if windows else [], ids=event_ids)
        for outcome, event, entries in pending:
            assert event.pk is not None  # set by insert_events
            for entry in entries:
                entry.reference = f"usage:{event.pk}"
            outcome.body = _with_id(event.pk, outcome.body)
        for index, first in repeats:
            outcomes[index] = Outcome(first.status, first.body, True)
        engine.flush()
    return outcomes


def usage_authorize(
    *, organization_id: int, meter: str, quantity: Decimal, now: datetime, user_id: int | None = None
) -> Outcome:
    """Would this be allowed now, and from where? Reads only; takes no lock and writes nothing."""
    catalog = catalogue()
    meter_info = catalog.meters_by_key.get(meter)
    meters = {meter_info.id} if meter_info is not None else set()
    with atomic_pipeline():  # the account, its windows and lots in one exchange
        engine = Engine({organization_id}, now=now, lock=False, meters=meters, with_lots=True, catalog=catalog)
        st = engine.state(organization_id)
        if st is None:
            return not_found(organization_id)
        if meter_info is None:
            return unknown_meter(meter)
        ev = engine.evaluate(st, meter_info, quantity)
        if not ev.allowed:
            body = denial(engine, st, ev, user_id=user_id, now=now)
            return Outcome(200, {"allowed": False, **body})
        fields = decision_fields(st, ev, drawn=[])
        fields["credits_charged"] = format_decimal(ev.credits)
        return Outcome(200, {"allowed": True, "decision": Decision.ALLOWED, **fields})
