"""Reservations: hold, commit (less, more, shortfall), release, expiry (lazy and swept), replays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing.models import CreditAccount
from billing.services import credits_grant, spend_cap_set
from plans.models import Overage, WindowKind
from tests.factories import T0, AllowanceFactory, MeterFactory, make_org
from tests.usage.engine_support import D, assert_books_balance, balance, entries, snapshot, use, windows
from usage.models import Reservation, UsageEvent
from usage.services import (
    UsageInput,
    reservation_commit,
    reservation_create,
    reservation_release,
    reservations_release_expired,
    usage_authorize,
)

pytestmark = pytest.mark.django_db

H = timedelta(hours=1)
MIN = timedelta(minutes=1)
PERIOD_END = datetime(2026, 2, 15, 12, tzinfo=UTC)


def setup(*, limit="10", cpu="5", credits=None):
    allowance = AllowanceFactory(limit=D(limit), meter=MeterFactory(credits_per_unit=D(cpu)))
    org = make_org(plan=allowance.plan)
    lot = credits_grant(organization_id=org.pk, credits=D(credits), now=T0) if credits else None
    return org, allowance.meter, allowance, lot


def reserve(org, meter, quantity, key="r1", *, now=T0, ttl=3600):
    return reservation_create(
        item=UsageInput(organization_id=org.pk, meter=meter.key, quantity=D(quantity), idempotency_key=key),
        ttl_seconds=ttl,
        now=now,
    )


def commit(org, reservation_id, quantity, *, now=T0 + MIN):
    return reservation_commit(organization_id=org.pk, reservation_id=reservation_id, quantity=D(quantity), now=now)


def release(org, reservation_id, *, now=T0 + MIN):
    return reservation_release(organization_id=org.pk, reservation_id=reservation_id, now=now)


def status_of(reservation_id):
    return Reservation.objects.values_list("status", flat=True).get(pk=reservation_id)


# Hold ------------------------------------------------------------------------------------------


def test_hold_takes_allowance_and_credits_so_others_cannot_use_them():
    # Given 10 included and 50 credits (10 units)
    org, meter, allowance, lot = setup(credits="50")
    # When 18 are held
    held = reserve(org, meter, "18")
    # Then 10 come from the allowance and 8 x 5 = 40 credits are held
    rid = held.body["id"]
    assert held.status == 201
    assert {
        k: held.body[k] for k in ("organization", "status", "quantity", "from_allowance", "credits_held", "expires_at")
    } == {
        "organization": org.pk,
        "status": "held",
        "quantity": "18",
        "from_allowance": "10",
        "credits_held": "40",
        "expires_at": (T0 + H).isoformat(),
    }
    assert held.body["lots"] == [{"lot": lot.pk, "credits": "40"}]
    assert held.body["credits"] == {"balance": "10"}
    assert windows(org) == [(allowance.pk, T0, PERIOD_END, D(10), D(10))]
    assert entries(org, kind="hold") == [("hold", lot.pk, D(-40), D(10), f"reservation:{rid}")]
    assert assert_books_balance(org) == D(10)
    # And others cannot use what is held: 3 units (15 credits) are denied, 2 (10 credits) fit
    assert use(org, meter, "3", "k1", now=T0 + MIN).status == 402
    assert usage_authorize(organization_id=org.pk, meter=meter.key, quantity=D(2), now=T0 + MIN).body["allowed"] is True


def test_hold_counts_towards_the_spend_cap():
    org, meter, _, _ = setup(limit="0", credits="100")
    spend_cap_set(organization_id=org.pk, cap=D(20), now=T0)
    assert reserve(org, meter, "4").status == 201
    out = use(org, meter, "1", "k1", now=T0 + MIN)
    assert out.body["error"]["code"] == "spend_cap_reached"
    assert CreditAccount.objects.get(organization=org).spend_month_total == D(20)


# Commit ----------------------------------------------------------------------------------------


def test_commit_less_consumes_the_actual_amount_and_releases_the_rest():
    org, meter, allowance, lot = setup(credits="50")
    rid = reserve(org, meter, "12").body["id"]  # 10 included + 10 credits held
    out = commit(org, rid, "4")
    assert out.status == 200
    event = UsageEvent.objects.get(organization=org, kind="commit")
    assert {
        k: out.body[k] for k in ("status", "quantity", "committed_quantity", "shortfall_credits", "usage_event")
    } == {
        "status": "committed",
        "quantity": "12",
        "committed_quantity": "4",
        "shortfall_credits": "0",
        "usage_event": event.pk,
    }
    assert (event.quantity, event.from_allowance, event.credits_charged) == (D(4), D(4), D(0))
    assert windows(org) == [(allowance.pk, T0, PERIOD_END, D(10), D(4))]
    assert entries(org) == [
        ("grant", lot.pk, D(50), D(50), f"grant:{lot.pk}"),
        ("hold", lot.pk, D(-10), D(40), f"reservation:{rid}"),
        ("release", lot.pk, D(10), D(50), f"reservation:{rid}"),
    ]
    assert assert_books_balance(org) == D(50)
    assert CreditAccount.objects.get(organization=org).spend_month_total == D(0)


def test_commit_more_takes_more_when_available():
    org, meter, allowance, lot = setup(credits="50")
    rid = reserve(org, meter, "12").body["id"]
    out = commit(org, rid, "15")
    assert (out.status, out.body["committed_quantity"], out.body["shortfall_credits"]) == (200, "15", "0")
    event = UsageEvent.objects.get(organization=org, kind="commit")
    assert (event.from_allowance, event.credits_charged) == (D(10), D(25))
    assert entries(org)[1:] == [
        ("hold", lot.pk, D(-10), D(40), f"reservation:{rid}"),
        ("release", lot.pk, D(10), D(50), f"reservation:{rid}"),
        ("consume", lot.pk, D(-25), D(25), f"usage:{event.pk}"),
    ]
    assert windows(org) == [(allowance.pk, T0, PERIOD_END, D(10), D(10))]
    assert assert_books_balance(org) == D(25)
    assert CreditAccount.objects.get(organization=org).spend_month_total == D(25)


def test_commit_more_than_can_be_covered_records_a_shortfall_and_never_goes_negative():
    # Given 20 credits and a hold of 12 (10 included, 10 credits)
    org, meter, allowance, lot = setup(credits="20")
    rid = reserve(org, meter, "12").body["id"]
    # When 20 are committed: 10 included, 10 x 5 = 50 credits owed, 20 available
    out = commit(org, rid, "20")
    # Then 20 credits are taken and 30 are a shortfall
    assert (out.status, out.body["committed_quantity"], out.body["shortfall_credits"]) == (200, "20", "30")
    assert out.body["credits"] == {"balance": "0"}
    reservation = Reservation.objects.get(pk=rid)
    assert (reservation.status, reservation.committed_quantity, reservation.shortfall) == ("committed", D(20), D(30))
    event = UsageEvent.objects.get(organization=org, kind="commit")
    assert (event.from_allowance, event.credits_charged, event.response["shortfall_credits"]) == (D(10), D(20), "30")
    assert windows(org) == [(allowance.pk, T0, PERIOD_END, D(10), D(10))]
    assert assert_books_balance(org) == D(0)


def test_commit_shortfall_when_credits_are_blocked():
    allowance = AllowanceFactory(limit=D(5), overage=Overage.BLOCK, meter=MeterFactory(credits_per_unit=D(2)))
    org = make_org(plan=allowance.plan)
    credits_grant(organization_id=org.pk, credits=D(100), now=T0)
    rid = reserve(org, allowance.meter, "5").body["id"]
    out = commit(org, rid, "7")
    assert (out.body["shortfall_credits"], out.body["credits"]) == ("4", {"balance": "100"})
    assert assert_books_balance(org) == D(100)


def test_commit_twice_with_the_same_quantity_gives_the_same_answer():
    org, meter, _, _ = setup(credits="50")
    rid = reserve(org, meter, "12").body["id"]
    first = commit(org, rid, "15")
    after = snapshot(org)
    again = commit(org, rid, "15", now=T0 + 2 * MIN)
    assert (again.status, again.body) == (first.status, first.body)
    assert again.replayed is True
    assert snapshot(org) == after
    assert UsageEvent.objects.filter(organization=org, kind="commit").count() == 1


def test_commit_again_with_another_quantity_is_409():
    org, meter, _, _ = setup(credits="50")
    rid = reserve(org, meter, "12").body["id"]
    commit(org, rid, "15")
    after = snapshot(org)
    out = commit(org, rid, "14")
    assert (out.status, out.body["error"]["code"]) == (409, "reservation_already_committed")
    assert snapshot(org) == after


def test_commit_zero_releases_everything():
    org, meter, allowance, _ = setup(credits="50")
    rid = reserve(org, meter, "12").body["id"]
    out = commit(org, rid, "0")
    assert (out.status, out.body["committed_quantity"], out.body["shortfall_credits"]) == (200, "0", "0")
    assert windows(org) == [(allowance.pk, T0, PERIOD_END, D(10), D(0))]
    assert assert_books_balance(org) == D(50)


def test_commit_after_the_hold_window_rolled_over_uses_the_new_window():
    # Given a 5-hour window of 5 and a hold of 5 in it, committed 6 hours later
    allowance = AllowanceFactory(limit=D(5), window_kind=WindowKind.ROLLING, window_seconds=5 * 3600)
    org = make_org(plan=allowance.plan)
    rid = reserve(org, allowance.meter, "5", ttl=7 * 3600).body["id"]
    out = commit(org, rid, "3", now=T0 + 6 * H)
    # Then the old window gets its hold back and the new window (from the commit) pays
    assert out.status == 200
    assert windows(org) == [
        (allowance.pk, T0, T0 + 5 * H, D(5), D(0)),
        (allowance.pk, T0 + 6 * H, T0 + 11 * H, D(5), D(3)),
    ]


def test_unknown_reservation_is_404():
    org, _, _, _ = setup()
    assert commit(org, 987654, "1").body["error"]["code"] == "reservation_not_found"
    assert release(org, 987654).status == 404


def test_a_reservation_of_another_organization_is_not_found():
    org, meter, allowance, _ = setup()
    other = make_org(plan=allowance.plan)
    rid = reserve(org, meter, "2").body["id"]
    assert commit(other, rid, "1").status == 404
    assert release(other, rid).status == 404
    assert status_of(rid) == "held"


# Release ---------------------------------------------------------------------------------------


def test_release_frees_everything_and_twice_is_the_same_answer():
    org, meter, allowance, lot = setup(credits="50")
    rid = reserve(org, meter, "12").body["id"]
    first = release(org, rid)
    assert (first.status, first.body["status"]) == (200, "released")
    assert windows(org) == [(allowance.pk, T0, PERIOD_END, D(10), D(0))]
    assert entries(org)[1:] == [
        ("hold", lot.pk, D(-10), D(40), f"reservation:{rid}"),
        ("release", lot.pk, D(10), D(50), f"reservation:{rid}"),
    ]
    assert CreditAccount.objects.get(organization=org).spend_month_total == D(0)
    after = snapshot(org)
    again = release(org, rid, now=T0 + 2 * MIN)
    assert (again.status, again.body, again.replayed) == (200, first.body, True)
    assert snapshot(org) == after
    assert assert_books_balance(org) == D(50)


def test_commit_after_release_is_409_and_release_after_commit_is_409():
    org, meter, _, _ = setup(credits="50")
    released = reserve(org, meter, "2", key="r1").body["id"]
    release(org, released)
    out = commit(org, released, "2")
    assert (out.status, out.body["error"]["code"]) == (409, "reservation_not_held")
    committed = reserve(org, meter, "2", key="r2").body["id"]
    commit(org, committed, "2")
    out = release(org, committed)
    assert (out.status, out.body["error"]["code"]) == (409, "reservation_not_held")


def test_a_hold_on_an_expiring_lot_released_after_the_expiry_expires_it():
    org, meter, _, _ = setup(limit="0", cpu="1")
    lot = credits_grant(organization_id=org.pk, credits=D(10), now=T0, expires_at=T0 + H)
    rid = reserve(org, meter, "4", ttl=7200).body["id"]
    # The rest of the lot expires lazily when the organization is touched after the expiry
    release(org, rid, now=T0 + 90 * MIN)
    assert entries(org)[1:] == [
        ("hold", lot.pk, D(-4), D(6), f"reservation:{rid}"),
        ("expire", lot.pk, D(-6), D(0), "expiry"),
        ("release", lot.pk, D(4), D(4), f"reservation:{rid}"),
        ("expire", lot.pk, D(-4), D(0), "expiry"),
    ]
    assert assert_books_balance(org) == D(0)


# Expiry ----------------------------------------------------------------------------------------


def test_an_expired_hold_is_released_lazily_when_the_organization_is_next_touched():
    # Given the whole allowance held for 60 seconds
    org, meter, allowance, _ = setup(limit="10")
    rid = reserve(org, meter, "10", ttl=60).body["id"]
    # Just before the expiry the allowance is still held
    assert use(org, meter, "1", "k1", now=T0 + timedelta(seconds=59)).status == 402
    assert status_of(rid) == "held"
    # When the organization is touched at the expiry
    out = use(org, meter, "4", "k2", now=T0 + timedelta(seconds=60))
    # Then the hold is released first, and the usage fits
    assert out.status == 201
    reservation = Reservation.objects.get(pk=rid)
    assert (reservation.status, reservation.settled_at) == ("expired", T0 + timedelta(seconds=60))
    assert windows(org) == [(allowance.pk, T0, PERIOD_END, D(10), D(4))]
    # And it can no longer be committed; releasing it answers with its state
    assert commit(org, rid, "10", now=T0 + 2 * MIN).body["error"]["code"] == "reservation_not_held"
    gone = release(org, rid, now=T0 + 2 * MIN)
    assert (gone.status, gone.body["status"]) == (200, "expired")


def test_commit_right_at_the_expiry_is_refused():
    org, meter, _, lot = setup(credits="50")
    rid = reserve(org, meter, "12", ttl=60).body["id"]
    out = commit(org, rid, "12", now=T0 + timedelta(seconds=60))
    assert (out.status, out.body["error"]["code"]) == (409, "reservation_not_held")
    # The lazy release that the refused commit saw is written
    assert status_of(rid) == "expired"
    assert entries(org, kind="release") == [("release", lot.pk, D(10), D(50), f"reservation:{rid}")]
    assert assert_books_balance(org) == D(50)


def test_authorize_sees_an_expired_hold_as_released_but_writes_nothing():
    org, meter, _, _ = setup(limit="10")
    rid = reserve(org, meter, "10", ttl=60).body["id"]
    out = usage_authorize(organization_id=org.pk, meter=meter.key, quantity=D(10), now=T0 + 2 * MIN)
    assert out.body["allowed"] is True
    assert status_of(rid) == "held"


def expiring_hold_setup():
    org, meter, allowance, lot = setup(credits="50")
    rid = reserve(org, meter, "12", ttl=60).body["id"]
    return org, meter, rid


def test_reservations_release_expired_run_twice_is_run_once_and_not_at_all_is_the_same():
    # Given a hold swept twice after its expiry
    swept, meter, swept_id = expiring_hold_setup()
    assert reservations_release_expired(now=T0 + 30 * MIN) == 1
    assert reservations_release_expired(now=T0 + 30 * MIN) == 0
    assert status_of(swept_id) == "expired"
    assert assert_books_balance(swept) == D(50)
    # And an identical one never swept
    lazy, lazy_meter, lazy_id = expiring_hold_setup()
    assert status_of(lazy_id) == "held"
    # When both use 12 after the expiry
    for org, m in ((swept, meter), (lazy, lazy_meter)):
        assert use(org, m, "12", "k1", now=T0 + H).body["credits_charged"] == "10"
    # Then they agree
    assert status_of(lazy_id) == "expired"
    shape = [("grant", D(50), D(50)), ("hold", D(-10), D(40)), ("release", D(10), D(50)), ("consume", D(-10), D(40))]
    assert [(k, a, b) for k, _, a, b, _ in entries(swept)] == shape
    assert [(k, a, b) for k, _, a, b, _ in entries(lazy)] == shape
    assert [w[4] for w in windows(swept)] == [w[4] for w in windows(lazy)] == [D(10)]
    assert balance(swept) == balance(lazy) == D(40)


def test_reservations_release_expired_before_the_expiry_does_nothing():
    org, _, rid = expiring_hold_setup()
    assert reservations_release_expired(now=T0 + timedelta(seconds=59)) == 0
    assert status_of(rid) == "held"
    assert balance(org) == D(40)


# Idempotency -----------------------------------------------------------------------------------


def test_same_key_replays_an_allowed_hold_and_another_body_is_422():
    org, meter, _, _ = setup(credits="50")
    first = reserve(org, meter, "12")
    after = snapshot(org)
    again = reserve(org, meter, "12", now=T0 + MIN)
    assert (again.status, again.body, again.replayed) == (201, first.body, True)
    assert snapshot(org) == after
    assert reserve(org, meter, "13").body["error"]["code"] == "idempotency_key_reused"
    assert reserve(org, meter, "12", ttl=60).body["error"]["code"] == "idempotency_key_reused"


def test_a_denied_reservation_is_stored_and_replays_as_402_even_after_credits_were_added():
    # Given 2 included and no credits
    org, meter, _, _ = setup(limit="2")
    before = snapshot(org)
    # When 5 are held
    denied = reserve(org, meter, "5")
    # Then it is denied, stored, and nothing is held
    assert denied.status == 402
    assert denied.body["error"]["code"] == "limit_reached"
    stored = Reservation.objects.get(organization=org, idempotency_key="r1")
    assert (stored.status, stored.from_allowance, stored.credits_held, stored.settled_at) == ("denied", D(0), D(0), T0)
    assert snapshot(org)["windows"] == before["windows"] == []
    assert snapshot(org)["ledger"] == []
    # And a replay after credits were granted is denied the same way
    credits_grant(organization_id=org.pk, credits=D(100), now=T0 + MIN)
    again = reserve(org, meter, "5", now=T0 + 2 * MIN)
    assert (again.status, again.body, again.replayed) == (402, denied.body, True)
    # A denied reservation cannot be committed or released
    assert commit(org, stored.pk, "1").status == 409
    assert release(org, stored.pk).status == 409


def test_a_client_key_that_looks_like_a_commit_key_does_not_clash_with_the_commit():
    # Given a client that recorded usage with the key a commit event uses internally
    org, meter, _, _ = setup(limit="10")
    held = reserve(org, meter, "2")
    assert held.status == 201
    rid = held.body["id"]
    assert use(org, meter, "1", f"reservation:{rid}", now=T0).status == 201

    # When the reservation is committed
    done = commit(org, rid, "2")

    # Then both stand: the commit is its own event, not a replay or a crash
    assert done.status == 200
    assert status_of(rid) == "committed"
    assert UsageEvent.objects.filter(organization=org, idempotency_key=f"reservation:{rid}").count() == 2


def test_a_denied_reservation_names_its_id_and_replays_it():
    org, meter, _, _ = setup(limit="1")
    denied = reserve(org, meter, "5", key="big")
    assert denied.status == 402
    assert denied.body["id"] == Reservation.objects.get(idempotency_key="big").pk
    assert reserve(org, meter, "5", key="big").body == denied.body
