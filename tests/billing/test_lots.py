"""Credit lots: draw order, effective and expiry dates, lazy and swept expiry, grants, adjustments.

After every scenario: balance = sum of lots' remaining = sum of ledger amounts (invariant 2).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from accounts.models import User
from billing.models import CreditAccount, CreditLot, LedgerEntry
from billing.selectors import lots_open
from billing.services import credits_adjust, credits_grant, lots_expire_due
from core.errors import DomainError, NotFound
from tests.factories import T0, AllowanceFactory, MeterFactory, make_org
from tests.usage.engine_support import D, assert_books_balance, balance, entries, use
from usage.models import UsageEvent
from usage.services import UsageInput, reservation_commit, reservation_create, usage_authorize

pytestmark = pytest.mark.django_db

H = timedelta(hours=1)
DAY = timedelta(days=1)


def credits_only_org():
    """An organization whose meter has no allowance left: every unit costs 1 credit."""
    allowance = AllowanceFactory(limit=D(0), meter=MeterFactory(credits_per_unit=D(1)))
    return make_org(plan=allowance.plan), allowance.meter


def grant(org, credits, *, now=T0, **kwargs):
    return credits_grant(organization_id=org.pk, credits=D(credits), now=now, **kwargs)


# Draw order ------------------------------------------------------------------------------------


def test_lots_are_drawn_by_priority_expiry_promotional_first_oldest_then_id():
    org, meter = credits_only_org()
    # Given lots granted in a shuffled order (created_at = the grant's `now`)
    b = grant(org, "4", category="paid", expires_at=T0 + 10 * DAY)
    f = grant(org, "7", category="paid", now=T0 - 2 * H)
    d = grant(org, "5", category="promotional", now=T0 - H)
    c = grant(org, "2", category="paid", expires_at=T0 + 5 * DAY)
    a = grant(org, "1", category="paid", priority=50, now=T0 - H)
    e = grant(org, "6", category="paid", now=T0 - 3 * H)  # older than f, though granted later
    g = grant(org, "3", category="promotional", expires_at=T0 + 10 * DAY)
    h = grant(org, "8", category="paid", now=T0 - 2 * H)  # same age as f, higher id
    expected = [a, c, g, b, d, e, f, h]
    assert [lot.pk for lot in lots_open(organization_id=org.pk, now=T0)] == [lot.pk for lot in expected]
    # When 2.5 and then the remaining 33.5 are consumed
    first = use(org, meter, "2.5", "k1", now=T0)
    second = use(org, meter, "33.5", "k2", now=T0)
    # Then lots are drawn in that order, one ledger entry per lot drawn
    assert first.body["lots"] == [{"lot": a.pk, "credits": "1"}, {"lot": c.pk, "credits": "1.5"}]
    assert second.body["lots"] == [
        {"lot": c.pk, "credits": "0.5"},
        {"lot": g.pk, "credits": "3"},
        {"lot": b.pk, "credits": "4"},
        {"lot": d.pk, "credits": "5"},
        {"lot": e.pk, "credits": "6"},
        {"lot": f.pk, "credits": "7"},
        {"lot": h.pk, "credits": "8"},
    ]
    r1, r2 = f"usage:{first.body['id']}", f"usage:{second.body['id']}"
    assert entries(org, kind="consume") == [
        ("consume", a.pk, D(-1), D(35), r1),
        ("consume", c.pk, D("-1.5"), D("33.5"), r1),
        ("consume", c.pk, D("-0.5"), D(33), r2),
        ("consume", g.pk, D(-3), D(30), r2),
        ("consume", b.pk, D(-4), D(26), r2),
        ("consume", d.pk, D(-5), D(21), r2),
        ("consume", e.pk, D(-6), D(15), r2),
        ("consume", f.pk, D(-7), D(8), r2),
        ("consume", h.pk, D(-8), D(0), r2),
    ]
    assert assert_books_balance(org) == D(0)
    assert list(CreditLot.objects.filter(organization=org).values_list("remaining", flat=True).distinct()) == [D(0)]


def test_draw_order_holds_after_a_hold_gives_a_fully_drawn_lot_back():
    # Given an older paid lot and a newer promotional one, neither expiring: promotional is drawn first
    org, meter = credits_only_org()
    paid = grant(org, "10", category="paid", now=T0 - 2 * H)
    promo = grant(org, "10", category="promotional", now=T0 - H)
    # And a hold that took the whole promotional lot
    held = reservation_create(
        item=UsageInput(organization_id=org.pk, meter=meter.key, quantity=D(10), idempotency_key="r1"),
        ttl_seconds=600,
        now=T0,
    )
    assert held.body["lots"] == [{"lot": promo.pk, "credits": "10"}]
    # When it is committed in full (the hold is given back, then the actual amount is drawn)
    out = reservation_commit(
        organization_id=org.pk, reservation_id=held.body["id"], quantity=D(10), now=T0 + timedelta(minutes=5)
    )
    # Then the promotional lot pays again, not the paid one
    assert out.status == 200
    assert out.body["lots"] == [{"lot": promo.pk, "credits": "10"}]
    assert CreditLot.objects.get(pk=paid.pk).remaining == D(10)
    assert assert_books_balance(org) == D(10)


# Effective and expiry dates --------------------------------------------------------------------


def test_a_lot_not_yet_effective_is_not_drawn():
    org, meter = credits_only_org()
    # Given a lot effective tomorrow (drawn first by priority once effective) and one effective now
    future = grant(org, "10", priority=1, effective_at=T0 + DAY)
    now_lot = grant(org, "3")
    # When 3 are used now: only the effective lot pays; 4 more cannot be covered
    assert use(org, meter, "3", "k1", now=T0).body["lots"] == [{"lot": now_lot.pk, "credits": "3"}]
    denied = use(org, meter, "4", "k2", now=T0 + DAY - H)
    assert denied.status == 402
    assert denied.body["credits"] == {"balance": "10"}  # counted in the balance, not yet drawable
    # Then from its effective time it is drawn
    assert use(org, meter, "4", "k3", now=T0 + DAY).body["lots"] == [{"lot": future.pk, "credits": "4"}]
    assert assert_books_balance(org) == D(6)


def test_an_expired_lot_is_not_drawn_and_lazy_expiry_writes_an_expire_entry():
    # Given 10 credits expiring in a day, 4 of them used
    org, meter = credits_only_org()
    lot = grant(org, "10", expires_at=T0 + DAY)
    use(org, meter, "4", "k1", now=T0)
    # A preflight after the expiry sees no credits but writes nothing
    preflight = usage_authorize(organization_id=org.pk, meter=meter.key, quantity=D(1), now=T0 + DAY)
    assert preflight.body["allowed"] is False
    assert entries(org, kind="expire") == []
    assert balance(org) == D(6)
    # When the organization is next touched at the expiry
    out = use(org, meter, "1", "k2", now=T0 + DAY)
    # Then the rest expires with an `expire` entry, the balance drops, and the request is denied
    assert out.status == 402
    assert entries(org, kind="expire") == [("expire", lot.pk, D(-6), D(0), "expiry")]
    assert LedgerEntry.objects.get(organization=org, kind="expire").created_at == T0 + DAY
    assert CreditLot.objects.get(pk=lot.pk).remaining == D(0)
    assert CreditAccount.objects.get(organization=org).next_lot_expiry is None
    assert assert_books_balance(org) == D(0)


def test_a_lot_is_drawable_until_just_before_it_expires():
    org, meter = credits_only_org()
    lot = grant(org, "10", expires_at=T0 + DAY)
    out = use(org, meter, "10", "k1", now=T0 + DAY - timedelta(microseconds=1))
    assert out.body["lots"] == [{"lot": lot.pk, "credits": "10"}]
    assert assert_books_balance(org) == D(0)


def test_lazy_expiry_keeps_the_next_expiry_and_leaves_later_lots():
    org, meter = credits_only_org()
    soon = grant(org, "5", expires_at=T0 + DAY)
    later = grant(org, "7", expires_at=T0 + 3 * DAY)
    forever = grant(org, "2")
    use(org, meter, "1", "k1", now=T0 + 2 * DAY)
    assert entries(org, kind="expire") == [("expire", soon.pk, D(-5), D(9), "expiry")]
    assert entries(org, kind="consume")[0][1] == later.pk
    assert CreditAccount.objects.get(organization=org).next_lot_expiry == T0 + 3 * DAY
    assert [(lot.pk, lot.remaining) for lot in lots_open(organization_id=org.pk, now=T0 + 2 * DAY)] == [
        (later.pk, D(6)),
        (forever.pk, D(2)),
    ]
    assert assert_books_balance(org) == D(8)


def ledger_shape(org):
    return list(
        LedgerEntry.objects.filter(organization=org).order_by("id").values_list("kind", "amount", "balance_after")
    )


def lots_expiring_setup():
    org, meter = credits_only_org()
    grant(org, "10", expires_at=T0 + DAY)
    grant(org, "5", expires_at=T0 + 4 * DAY)
    grant(org, "3")
    use(org, meter, "2", "k1", now=T0)
    return org, meter


def test_lots_expire_due_run_twice_or_not_at_all_gives_the_same_balance():
    # Given an organization swept twice after its first lot expired
    swept, meter = lots_expiring_setup()
    assert lots_expire_due(now=T0 + 2 * DAY) == 1
    assert entries(swept, kind="expire")[0][2:4] == (D(-8), D(8))
    assert lots_expire_due(now=T0 + 2 * DAY) == 0
    assert balance(swept) == D(8)
    # And an identical organization never swept
    lazy, _ = lots_expiring_setup()
    assert balance(lazy) == D(16)
    # When both use 1 credit after the first expiry
    use(swept, meter, "1", "k2", now=T0 + 3 * DAY)
    use(lazy, meter, "1", "k2", now=T0 + 3 * DAY)
    # Then their ledgers and balances are the same
    assert (
        ledger_shape(swept)
        == ledger_shape(lazy)
        == [
            ("grant", D(10), D(10)),
            ("grant", D(5), D(15)),
            ("grant", D(3), D(18)),
            ("consume", D(-2), D(16)),
            ("expire", D(-8), D(8)),
            ("consume", D(-1), D(7)),
        ]
    )
    assert assert_books_balance(swept) == assert_books_balance(lazy) == D(7)
    # And after the second expiry, a sweep and a lazy touch agree again
    assert lots_expire_due(now=T0 + 5 * DAY) == 2
    assert lots_expire_due(now=T0 + 5 * DAY) == 0
    assert assert_books_balance(swept) == assert_books_balance(lazy) == D(3)


def test_lots_expire_due_before_anything_expires_changes_nothing():
    org, _ = lots_expiring_setup()
    before = ledger_shape(org)
    assert lots_expire_due(now=T0 + DAY - timedelta(microseconds=1)) == 0
    assert ledger_shape(org) == before
    assert assert_books_balance(org) == D(16)


# Grants ----------------------------------------------------------------------------------------


def test_grant_with_the_same_external_ref_twice_grants_once():
    org, _ = credits_only_org()
    first = grant(org, "40", category="paid", external_ref="pi_123")
    second = grant(org, "40", category="paid", external_ref="pi_123", now=T0 + H)
    assert second.pk == first.pk
    assert entries(org) == [("grant", first.pk, D(40), D(40), "grant:pi_123")]
    assert assert_books_balance(org) == D(40)
    # The same ref in another organization is its own grant
    other, _ = credits_only_org()
    assert grant(other, "40", external_ref="pi_123").pk != first.pk
    assert assert_books_balance(other) == D(40)


def test_grant_records_reason_actor_and_a_reference():
    org, _ = credits_only_org()
    admin = User.objects.create_user(email="admin@example.com")
    lot = grant(org, "12.5", reason="goodwill", actor_id=admin.pk, priority=10, expires_at=T0 + DAY)
    entry = LedgerEntry.objects.get(organization=org)
    assert (entry.kind, entry.amount, entry.reason, entry.actor_id, entry.reference) == (
        "grant",
        D("12.5"),
        "goodwill",
        admin.pk,
        f"grant:{lot.pk}",
    )
    assert (lot.category, lot.source, lot.priority, lot.effective_at, lot.expires_at) == (
        "promotional",
        "grant",
        10,
        T0,
        T0 + DAY,
    )
    assert CreditAccount.objects.get(organization=org).next_lot_expiry == T0 + DAY


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"credits": D(0)}, "invalid_credits"),
        ({"credits": D(-1)}, "invalid_credits"),
        ({"credits": D(1), "category": "bonus"}, "invalid_category"),
        ({"credits": D(1), "expires_at": T0}, "invalid_expiry"),
        ({"credits": D(1), "effective_at": T0 + DAY, "expires_at": T0 + H}, "invalid_expiry"),
    ],
)
def test_invalid_grants_are_refused(kwargs, code):
    org, _ = credits_only_org()
    with pytest.raises(DomainError) as info:
        credits_grant(organization_id=org.pk, now=T0, **kwargs)
    assert info.value.code == code
    assert LedgerEntry.objects.filter(organization=org).count() == 0


def test_grant_to_an_unknown_organization_is_not_found():
    with pytest.raises(NotFound):
        credits_grant(organization_id=987654, credits=D(1), now=T0)


# Adjustments -----------------------------------------------------------------------------------


def test_adjust_needs_a_reason():
    org, _ = credits_only_org()
    with pytest.raises(DomainError) as info:
        credits_adjust(organization_id=org.pk, credits=D(5), reason="  ", actor_id=None, now=T0)
    assert info.value.code == "reason_required"
    with pytest.raises(DomainError) as info:
        credits_adjust(organization_id=org.pk, credits=D(0), reason="x", actor_id=None, now=T0)
    assert info.value.code == "invalid_credits"
    assert LedgerEntry.objects.filter(organization=org).count() == 0


def test_positive_adjust_adds_a_lot_with_actor_and_reason():
    org, _ = credits_only_org()
    admin = User.objects.create_user(email="admin@example.com")
    assert credits_adjust(
        organization_id=org.pk, credits=D(5), reason="support ticket 7", actor_id=admin.pk, now=T0
    ) == D(5)
    lot = CreditLot.objects.get(organization=org)
    assert (lot.category, lot.source, lot.granted, lot.actor_id, lot.reason) == (
        "promotional",
        "adjustment",
        D(5),
        admin.pk,
        "support ticket 7",
    )
    entry = LedgerEntry.objects.get(organization=org)
    assert (entry.kind, entry.amount, entry.reason, entry.actor_id, entry.reference) == (
        "adjust",
        D(5),
        "support ticket 7",
        admin.pk,
        f"adjust:{lot.pk}",
    )
    assert assert_books_balance(org) == D(5)


def test_negative_adjust_removes_drawable_credits_in_draw_order_without_counting_spend():
    org, _ = credits_only_org()
    admin = User.objects.create_user(email="admin@example.com")
    first = grant(org, "3", priority=1)
    second = grant(org, "10")
    grant(org, "50", effective_at=T0 + DAY)  # not drawable yet
    new_balance = credits_adjust(
        organization_id=org.pk, credits=D(-5), reason="double grant", actor_id=admin.pk, now=T0
    )
    assert new_balance == D(58)
    assert list(
        LedgerEntry.objects.filter(organization=org, kind="adjust")
        .order_by("id")
        .values_list("lot_id", "amount", "balance_after", "reason", "actor_id")
    ) == [
        (first.pk, D(-3), D(60), "double grant", admin.pk),
        (second.pk, D(-2), D(58), "double grant", admin.pk),
    ]
    assert CreditAccount.objects.get(organization=org).spend_month_total == D(0)
    assert assert_books_balance(org) == D(58)


def test_negative_adjust_beyond_the_available_credits_is_refused_and_changes_nothing():
    org, _ = credits_only_org()
    grant(org, "8")
    grant(org, "50", effective_at=T0 + DAY)
    with pytest.raises(DomainError) as info:
        credits_adjust(organization_id=org.pk, credits=D(-9), reason="mistake", actor_id=None, now=T0)
    assert info.value.code == "insufficient_credits"
    assert info.value.message == "Only 8 credits can be removed now."
    assert [e[0] for e in entries(org)] == ["grant", "grant"]
    assert assert_books_balance(org) == D(58)
    # Exactly the available amount can be removed
    assert credits_adjust(organization_id=org.pk, credits=D(-8), reason="mistake", actor_id=None, now=T0) == D(50)
    assert assert_books_balance(org) == D(50)


def test_consumption_entries_name_their_event():
    org, meter = credits_only_org()
    lot = grant(org, "5")
    out = use(org, meter, "2", "k1", now=T0)
    event = UsageEvent.objects.get(organization=org, idempotency_key="k1")
    assert entries(org, kind="consume") == [("consume", lot.pk, D(-2), D(3), f"usage:{event.pk}")]
    assert out.body["id"] == event.pk
