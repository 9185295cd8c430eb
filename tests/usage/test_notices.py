"""Notices: window thresholds, credits low / depleted, allowance reset, and sending them once."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import translation

from accounts.models import Membership, Role, User
from accounts.services import notification_preferences_set
from billing.services import credits_grant
from plans.models import WindowKind
from tests.factories import T0, AllowanceFactory, MeterFactory, PlanFactory, make_org
from tests.usage.engine_support import D, use
from usage import tasks
from usage.models import AllowanceWindow, Notice, NoticeKind
from usage.services import (
    UsageInput,
    notices_send_pending,
    reservation_create,
    reservation_release,
    windows_close_finished,
)
from usage.services.notices import notice_text

pytestmark = pytest.mark.django_db

H = timedelta(hours=1)
PERIOD_END = "2026-02-15T12:00:00+00:00"


def period_org(*, limit="10", owner=None):
    meter = MeterFactory(name="Local tasks")
    allowance = AllowanceFactory(limit=D(limit), meter=meter)
    return make_org(plan=allowance.plan, owner=owner), meter, allowance


def notices(org, kind=None):
    qs = Notice.objects.filter(organization=org).order_by("id")
    if kind:
        qs = qs.filter(kind=kind)
    return list(qs.values_list("kind", "dedupe_key", "payload"))


def threshold(allowance, pct, *, start=T0, window="billing period", limit="10", resets_at=PERIOD_END):
    return (
        "window_threshold",
        f"{allowance.pk}:{start.isoformat()}:{pct}",
        {
            "percent": pct,
            "meter_id": allowance.meter_id,
            "window": window,
            "window_kind": allowance.window_kind,
            "window_seconds": allowance.window_seconds,
            "limit": limit,
            "resets_at": resets_at,
        },
    )


# Window thresholds -----------------------------------------------------------------------------


def test_each_threshold_creates_one_notice_when_crossed():
    org, meter, allowance = period_org()
    use(org, meter, "4", "k1", now=T0)
    assert notices(org) == []
    use(org, meter, "1", "k2", now=T0)  # 5 of 10: 50 %
    assert notices(org) == [threshold(allowance, 50)]
    use(org, meter, "2", "k3", now=T0)  # 7: nothing new
    use(org, meter, "1", "k4", now=T0)  # 8: 80 %
    use(org, meter, "2", "k5", now=T0)  # 10: 100 %
    assert notices(org) == [threshold(allowance, 50), threshold(allowance, 80), threshold(allowance, 100)]
    assert list(Notice.objects.filter(organization=org).values_list("created_at", flat=True).distinct()) == [T0]


def test_one_usage_crossing_every_threshold_creates_three_notices():
    org, meter, allowance = period_org()
    use(org, meter, "25", "k1", now=T0)  # 10 included, the rest would need credits
    assert notices(org) == []  # denied: nothing consumed, nothing to tell
    credits_grant(organization_id=org.pk, credits=D(100), now=T0)
    use(org, meter, "12", "k2", now=T0)
    assert notices(org, "window_threshold") == [
        threshold(allowance, 50),
        threshold(allowance, 80),
        threshold(allowance, 100),
    ]


def test_a_threshold_crossed_again_in_the_same_window_is_not_repeated():
    org, meter, allowance = period_org()
    hold = reservation_create(
        item=UsageInput(organization_id=org.pk, meter=meter.key, quantity=D(10), idempotency_key="r1"),
        ttl_seconds=600,
        now=T0,
    )
    assert len(notices(org)) == 3
    reservation_release(organization_id=org.pk, reservation_id=hold.body["id"], now=T0 + H / 6)
    # When the window fills again
    use(org, meter, "10", "k1", now=T0 + H)
    # Then there are still three notices
    assert notices(org) == [threshold(allowance, 50), threshold(allowance, 80), threshold(allowance, 100)]


def test_a_new_window_has_its_own_notices():
    meter = MeterFactory()
    allowance = AllowanceFactory(meter=meter, limit=D(4), window_kind=WindowKind.ROLLING, window_seconds=5 * 3600)
    org = make_org(plan=allowance.plan)
    use(org, meter, "2", "k1", now=T0)
    use(org, meter, "2", "k2", now=T0 + 6 * H)
    five = {"window": "5 hours", "limit": "4"}
    assert notices(org) == [
        threshold(allowance, 50, resets_at=(T0 + 5 * H).isoformat(), **five),
        threshold(allowance, 50, start=T0 + 6 * H, resets_at=(T0 + 11 * H).isoformat(), **five),
    ]


def test_each_window_of_a_meter_has_its_own_thresholds():
    meter = MeterFactory()
    plan = PlanFactory()
    five = AllowanceFactory(plan=plan, meter=meter, limit=D(4), window_kind=WindowKind.ROLLING, window_seconds=5 * 3600)
    seven = AllowanceFactory(
        plan=plan, meter=meter, limit=D(20), window_kind=WindowKind.ROLLING, window_seconds=7 * 86400
    )
    org = make_org(plan=plan)
    use(org, meter, "4", "k1", now=T0)  # 100 % of 4, 20 % of 20
    assert [n[1] for n in notices(org)] == [f"{five.pk}:{T0.isoformat()}:{pct}" for pct in (50, 80, 100)]
    use(org, meter, "4", "k2", now=T0 + 5 * H)
    use(org, meter, "2", "k3", now=T0 + 10 * H)  # 10 of 20: 50 % of the 7 days
    assert [n[1] for n in notices(org) if n[1].startswith(f"{seven.pk}:")] == [f"{seven.pk}:{T0.isoformat()}:50"]


# Credits low and depleted ----------------------------------------------------------------------


def test_credits_low_then_depleted_once_a_day(settings):
    settings.CREDITS_LOW_THRESHOLD = "20"
    org, meter, _ = period_org(limit="0")
    credits_grant(organization_id=org.pk, credits=D(50), now=T0)
    use(org, meter, "4", "k1", now=T0)  # 30 left
    assert notices(org) == []
    use(org, meter, "3", "k2", now=T0)  # 15 left: under 20
    assert notices(org) == [("credits_low", "2026-01-15", {"balance": "15", "threshold": "20"})]
    use(org, meter, "1", "k3", now=T0)  # 10 left: already low
    use(org, meter, "2", "k4", now=T0 + H)  # 0 left
    assert notices(org) == [
        ("credits_low", "2026-01-15", {"balance": "15", "threshold": "20"}),
        ("credits_depleted", "2026-01-15", {"balance": "0"}),
    ]
    # A top-up and a second fall on the same day tell nothing new; the next day they do
    credits_grant(organization_id=org.pk, credits=D(50), now=T0 + 2 * H)
    use(org, meter, "10", "k5", now=T0 + 2 * H)
    assert len(notices(org)) == 2
    credits_grant(organization_id=org.pk, credits=D(50), now=T0 + 24 * H)
    use(org, meter, "9", "k6", now=T0 + 24 * H)  # 50 -> 5
    assert notices(org)[2:] == [("credits_low", "2026-01-16", {"balance": "5", "threshold": "20"})]


def test_falling_straight_to_zero_is_depleted_not_low(settings):
    settings.CREDITS_LOW_THRESHOLD = "20"
    org, meter, _ = period_org(limit="0")
    credits_grant(organization_id=org.pk, credits=D(50), now=T0)
    use(org, meter, "10", "k1", now=T0)
    assert notices(org) == [("credits_depleted", "2026-01-15", {"balance": "0"})]


# Allowance reset ----------------------------------------------------------------------------


def rolling_org(owner=None):
    meter = MeterFactory(name="Local tasks")
    allowance = AllowanceFactory(meter=meter, limit=D(5), window_kind=WindowKind.ROLLING, window_seconds=5 * 3600)
    return make_org(plan=allowance.plan, owner=owner), meter, allowance


def test_windows_close_finished_creates_allowance_reset_notices_once():
    org, meter, allowance = rolling_org()
    use(org, meter, "2", "k1", now=T0)
    # Before the window ends nothing is closed
    assert windows_close_finished(now=T0 + 5 * H - timedelta(microseconds=1)) == 0
    assert notices(org, "allowance_reset") == []
    # At its end it is closed with one notice
    assert windows_close_finished(now=T0 + 5 * H) == 1
    expected = [
        (
            "allowance_reset",
            f"{allowance.pk}:{T0.isoformat()}",
            {
                "window": "5 hours",
                "window_kind": "rolling",
                "window_seconds": 5 * 3600,
                "meter": "Local tasks",
                "limit": "5",
                "used": "2",
                "reset_at": (T0 + 5 * H).isoformat(),
            },
        )
    ]
    assert notices(org, "allowance_reset") == expected
    assert AllowanceWindow.objects.get(organization=org).closed_at == T0 + 5 * H
    # Run again: nothing more
    assert windows_close_finished(now=T0 + 6 * H) == 0
    assert notices(org, "allowance_reset") == expected


def test_windows_close_finished_not_run_changes_no_decision_and_catches_up_later():
    org, meter, allowance = rolling_org()
    use(org, meter, "5", "k1", now=T0)
    # Without the task, the next window opens on use
    assert use(org, meter, "5", "k2", now=T0 + 5 * H).status == 201
    # A late run closes only the ended window, once
    assert windows_close_finished(now=T0 + 6 * H) == 1
    assert [n[1] for n in notices(org, "allowance_reset")] == [f"{allowance.pk}:{T0.isoformat()}"]
    assert windows_close_finished(now=T0 + 10 * H) == 1
    assert windows_close_finished(now=T0 + 10 * H) == 0
    assert len(notices(org, "allowance_reset")) == 2


def test_an_unused_window_closes_without_a_notice():
    org, meter, _ = rolling_org()
    hold = reservation_create(
        item=UsageInput(organization_id=org.pk, meter=meter.key, quantity=D(2), idempotency_key="r1"),
        ttl_seconds=600,
        now=T0,
    )
    reservation_release(organization_id=org.pk, reservation_id=hold.body["id"], now=T0 + H)
    assert windows_close_finished(now=T0 + 5 * H) == 1
    assert notices(org, "allowance_reset") == []


# Sending ---------------------------------------------------------------------------------------


def test_notices_are_emailed_once_to_owners_and_admins(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    owner = User.objects.create_user(email="owner@example.com")
    org, meter, allowance = period_org(owner=owner)
    admin = User.objects.create_user(email="admin@example.com")
    member = User.objects.create_user(email="member@example.com")
    gone = User.objects.create_user(email="gone@example.com", is_active=False)
    Membership.objects.create(organization=org, user=admin, role=Role.ADMIN)
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    Membership.objects.create(organization=org, user=gone, role=Role.OWNER)
    use(org, meter, "5", "k1", now=T0)
    mail.outbox.clear()
    # When pending notices are sent
    assert notices_send_pending(now=T0 + H) == 1
    # Then one email went to the active owners and admins
    [message] = mail.outbox
    assert sorted(message.to) == ["admin@example.com", "owner@example.com"]
    assert message.subject == f"You have used 50% of your billing period allowance for {meter.name}"
    assert message.body == (
        f"Your organization has used 50% of its billing period allowance for {meter.name} (limit 10)."
        " It resets at 2026-02-15 12:00 UTC.\n\n"
        f"Past the allowance, usage is paid with credits. See your usage: {settings.PUBLIC_BASE_URL}/orgs/{org.pk}/"
    )
    assert message.from_email == settings.DEFAULT_FROM_EMAIL
    assert list(Notice.objects.filter(organization=org).values_list("sent_at", flat=True)) == [T0 + H]
    # And running again sends nothing
    assert notices_send_pending(now=T0 + 2 * H) == 0
    assert len(mail.outbox) == 1


def test_each_kind_of_notice_has_its_subject(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.CREDITS_LOW_THRESHOLD = "20"
    owner = User.objects.create_user(email="owner@example.com")
    org, meter, _ = rolling_org(owner=owner)
    credits_grant(organization_id=org.pk, credits=D(30), now=T0)
    use(org, meter, "7", "k1", now=T0)  # 5 included (50/80/100 %), 2 x 5 = 10 credits: 20 left
    use(org, meter, "1", "k2", now=T0)  # 15 left: low
    use(org, meter, "3", "k3", now=T0)  # 0 left: depleted
    windows_close_finished(now=T0 + 5 * H)
    mail.outbox.clear()
    assert notices_send_pending(now=T0 + 5 * H) == 6
    assert [m.subject for m in mail.outbox] == [
        f"You have used 50% of your 5 hours allowance for {meter.name}",
        f"You have used 80% of your 5 hours allowance for {meter.name}",
        f"You have used 100% of your 5 hours allowance for {meter.name}",
        "Your credit balance is low (15 credits)",
        "You are out of credits",
        f"Your 5 hours allowance for {meter.name} has reset",
    ]


def test_a_notice_without_recipients_is_marked_sent_without_email(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    org, meter, _ = period_org()
    use(org, meter, "5", "k1", now=T0)
    mail.outbox.clear()
    assert notices_send_pending(now=T0 + H) == 0
    assert mail.outbox == []
    assert list(Notice.objects.filter(organization=org).values_list("sent_at", flat=True)) == [T0 + H]


# Who gets them: each person's notification preferences (accounts.selectors.notification_recipients) ----


def team_org(suffix: str = ""):
    """An org on a 5-hour window with owner Olga, admin Ada and member Mia (in that order)."""
    olga = User.objects.create_user(email=f"olga{suffix}@example.com")
    org, meter, _ = rolling_org(owner=olga)
    ada, mia = (
        Membership.objects.create(
            organization=org, user=User.objects.create_user(email=f"{name}{suffix}@example.com"), role=role
        )
        for name, role in (("ada", Role.ADMIN), ("mia", Role.MEMBER))
    )
    return org, meter, ada, mia


def test_each_notice_goes_to_those_who_want_its_category(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.CREDITS_LOW_THRESHOLD = "20"
    org, meter, ada, mia = team_org()
    # Given the admin turned off usage alerts and the member opted in to allowance resets
    notification_preferences_set(membership=ada, choices={"usage_alerts": False}, now=T0)
    notification_preferences_set(membership=mia, choices={"allowance_resets": True}, now=T0)
    credits_grant(organization_id=org.pk, credits=D(30), now=T0)
    use(org, meter, "7", "k1", now=T0)  # 50/80/100 % of the window, 20 credits left
    use(org, meter, "1", "k2", now=T0)  # low
    use(org, meter, "3", "k3", now=T0)  # depleted
    windows_close_finished(now=T0 + 5 * H)
    mail.outbox.clear()
    # When the notices are sent
    assert notices_send_pending(now=T0 + 5 * H) == 6
    # Then threshold emails reach the owner only, balance emails the owner and admin, the reset all three
    owner = ["olga@example.com"]
    managers = [*owner, "ada@example.com"]
    assert [(m.subject, m.to) for m in mail.outbox] == [
        (f"You have used 50% of your 5 hours allowance for {meter.name}", owner),
        (f"You have used 80% of your 5 hours allowance for {meter.name}", owner),
        (f"You have used 100% of your 5 hours allowance for {meter.name}", owner),
        ("Your credit balance is low (15 credits)", managers),
        ("You are out of credits", managers),
        (f"Your 5 hours allowance for {meter.name} has reset", [*managers, "mia@example.com"]),
    ]


def test_a_notice_whose_category_nobody_wants_is_marked_sent_without_email(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    org, meter, ada, _ = team_org()
    owner = org.memberships.get(role=Role.OWNER)
    for membership in (owner, ada):
        notification_preferences_set(membership=membership, choices={"usage_alerts": False}, now=T0)
    use(org, meter, "3", "k1", now=T0)  # 60 % of 5: one threshold notice
    mail.outbox.clear()

    assert notices_send_pending(now=T0 + H) == 0
    assert mail.outbox == []
    assert list(Notice.objects.filter(organization=org).values_list("sent_at", flat=True)) == [T0 + H]


PAYLOADS: dict[str, dict[str, object]] = {
    NoticeKind.WINDOW_THRESHOLD: {
        "percent": 50,
        "meter": "Tasks",
        "window": "5 hours",
        "limit": "4",
        "resets_at": PERIOD_END,
    },
    NoticeKind.ALLOWANCE_RESET: {"meter": "Tasks", "window": "5 hours", "limit": "4", "reset_at": PERIOD_END},
    NoticeKind.CREDITS_LOW: {"balance": "5", "threshold": "20"},
    NoticeKind.CREDITS_DEPLETED: {"balance": "0"},
}


def pending(org, kinds, *, tag: str) -> None:
    for i, kind in enumerate(kinds):
        Notice.objects.create(
            organization=org, kind=kind, dedupe_key=f"{tag}:{i}", payload=PAYLOADS[kind], created_at=T0
        )


def test_sending_runs_the_same_queries_for_one_notice_or_many(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    org, _, ada, mia = team_org()
    notification_preferences_set(membership=ada, choices={"credit_balance": False}, now=T0)
    notification_preferences_set(membership=mia, choices={"usage_alerts": True}, now=T0)
    pending(org, [NoticeKind.WINDOW_THRESHOLD], tag="one")
    with CaptureQueriesContext(connection) as one:
        assert notices_send_pending(now=T0) == 1
    # Given five organizations, each with its people and preferences, and twenty notices of every kind
    pending(org, list(PAYLOADS), tag="many")
    for i in range(4):
        other, _, _, other_mia = team_org(suffix=str(i))
        notification_preferences_set(membership=other_mia, choices={"allowance_resets": True}, now=T0)
        pending(other, list(PAYLOADS), tag="many")
    mail.outbox.clear()
    # When they are sent, then the sender runs the same queries as for one
    with CaptureQueriesContext(connection) as many:
        assert notices_send_pending(now=T0) == 20
    assert len(many.captured_queries) == len(one.captured_queries)
    assert len(mail.outbox) == 20
    # the first org: 3 for usage alerts (its member opted in), 2 for resets, 1 for balance (its admin opted out);
    # each other org: 3 for resets (its member opted in), 2 for the rest
    assert sorted(len(m.to) for m in mail.outbox) == [1] * 2 + [2] * 13 + [3] * 5


# Languages: each email in its readers' language -------------------------------------------------------


def speakers(org, **languages: str) -> None:
    for name, language in languages.items():
        User.objects.filter(memberships__organization=org, email__startswith=name).update(language=language)


def test_a_notice_goes_to_each_reader_in_their_language(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    org, _, _, mia = team_org()
    # Given the owner reads Japanese, the admin English, and the member (opted in) chose no language
    speakers(org, olga="ja", ada="en")
    notification_preferences_set(membership=mia, choices={"usage_alerts": True}, now=T0)
    payload = {**PAYLOADS[NoticeKind.WINDOW_THRESHOLD], "percent": 80, "limit": "12000"}
    Notice.objects.create(
        organization=org, kind=NoticeKind.WINDOW_THRESHOLD, dedupe_key="n", payload=payload, created_at=T0
    )
    # When the notice is sent
    assert notices_send_pending(now=T0) == 1
    # Then the owner gets it in Japanese, and the admin and the member in the site's language, English
    link = f"{settings.PUBLIC_BASE_URL}/orgs/{org.pk}/"
    ja, en = mail.outbox
    assert (ja.to, ja.subject) == (["olga@example.com"], "Tasks の利用枠（5時間）の 80% を使用しました")
    assert ja.body == (
        "組織は Tasks の利用枠（5時間、上限 12,000）の 80% を使用しました。"
        "2026年2月15日 12:00 UTC にリセットされます。\n\n"
        f"利用枠を超えた分はクレジットで支払われます。利用状況はこちら: {link}"
    )
    assert (en.to, en.subject) == (
        ["ada@example.com", "mia@example.com"],
        "You have used 80% of your 5 hours allowance for Tasks",
    )
    assert en.body == (
        "Your organization has used 80% of its 5 hours allowance for Tasks (limit 12,000)."
        " It resets at 2026-02-15 12:00 UTC.\n\n"
        f"Past the allowance, usage is paid with credits. See your usage: {link}"
    )
    assert list(Notice.objects.filter(organization=org).values_list("sent_at", flat=True)) == [T0]


def test_every_kind_of_notice_reads_in_japanese(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    org, _, _, _ = team_org()
    Membership.objects.filter(organization=org).exclude(role=Role.OWNER).delete()
    speakers(org, olga="ja")
    pending(org, list(PAYLOADS), tag="k")
    reset = {**PAYLOADS[NoticeKind.ALLOWANCE_RESET], "window": "billing period", "limit": "1500.5"}
    Notice.objects.create(
        organization=org, kind=NoticeKind.ALLOWANCE_RESET, dedupe_key="p", payload=reset, created_at=T0
    )

    assert notices_send_pending(now=T0) == 5

    credits = f"{settings.PUBLIC_BASE_URL}/orgs/{org.pk}/credits/"
    assert mail.outbox[0].subject == "Tasks の利用枠（5時間）の 50% を使用しました"
    assert [(m.subject, m.body) for m in mail.outbox[1:]] == [
        (
            "Tasks の利用枠（5時間）がリセットされました",
            "Tasks の利用枠（5時間）が 2026年2月15日 12:00 UTC にリセットされ、4 を再び使えるようになりました。"
            f"\n\n{settings.PUBLIC_BASE_URL}/orgs/{org.pk}/",
        ),
        (
            "クレジット残高が少なくなっています（5 クレジット）",
            "クレジット残高が 20 クレジットを下回りました。"
            f"クレジットを購入するか、自動チャージをオンにしてください: {credits}",
        ),
        (
            "クレジット残高がなくなりました",
            "クレジット残高が 0 になりました。"
            f"クレジットを購入するまで、プランの利用枠を超える利用はできません: {credits}",
        ),
        (
            "Tasks の利用枠（請求期間）がリセットされました",
            "Tasks の利用枠（請求期間）が 2026年2月15日 12:00 UTC にリセットされ、"
            "1,500.5 を再び使えるようになりました。"
            f"\n\n{settings.PUBLIC_BASE_URL}/orgs/{org.pk}/",
        ),
    ]


def test_window_names_stored_in_english_are_written_in_the_readers_language(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    org, _, _, _ = team_org()
    Membership.objects.filter(organization=org).exclude(role=Role.OWNER).delete()
    speakers(org, olga="ja")
    stored = ["billing period", "1 hour", "5 hours", "1 day", "7 days", "90 minutes", "a fortnight"]
    for i, window in enumerate(stored):
        payload = {**PAYLOADS[NoticeKind.ALLOWANCE_RESET], "window": window}
        Notice.objects.create(
            organization=org, kind=NoticeKind.ALLOWANCE_RESET, dedupe_key=str(i), payload=payload, created_at=T0
        )

    assert notices_send_pending(now=T0) == len(stored)

    # a name the sender does not know (not written by plans.models.window_label) is kept as stored
    assert [m.subject for m in mail.outbox] == [
        f"Tasks の利用枠（{name}）がリセットされました"
        for name in ["請求期間", "1時間", "5時間", "1日", "7日", "90分", "a fortnight"]
    ]


def test_a_reader_without_a_language_gets_the_sites(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.LANGUAGE_CODE = "ja"
    org, _, _, _ = team_org()
    # Given the owner chose no language and the admin chose English, on a site whose language is Japanese
    speakers(org, ada="en")
    pending(org, [NoticeKind.CREDITS_DEPLETED], tag="d")

    assert notices_send_pending(now=T0) == 1

    assert [(m.to, m.subject) for m in mail.outbox] == [
        (["olga@example.com"], "クレジット残高がなくなりました"),
        (["ada@example.com"], "You are out of credits"),
    ]


def test_notices_store_window_names_in_the_site_language_whatever_the_request(settings):
    # Given a window near its limit and a request in Japanese
    org, meter, allowance = period_org()
    with translation.override("ja"):
        use(org, meter, "5", "k1", now=T0)
    use(org, meter, "5", "k2", now=T0 + H)
    with translation.override("ja"):
        windows_close_finished(now=T0 + 400 * 24 * H)
    # Then the stored notices (and the emails built from them) name the window in English
    windows = [n.payload["window"] for n in Notice.objects.filter(organization=org).order_by("id")]
    assert windows == ["billing period"] * 4


def test_a_notice_names_its_window_from_the_stored_kind_not_the_stored_label():
    # Given a notice whose label was stored in another language (as a site in Japanese would store it)
    org, meter, allowance = period_org()
    notice = Notice(
        organization=org,
        kind=NoticeKind.ALLOWANCE_RESET,
        dedupe_key="x",
        payload={
            "window": "5時間",
            "window_kind": "rolling",
            "window_seconds": 5 * 3600,
            "meter": "Tasks",
            "limit": "4",
            "reset_at": PERIOD_END,
        },
        created_at=T0,
    )
    # Then each language names the window from its kind and length
    with translation.override("en"):
        assert notice_text(notice)[0] == "Your 5 hours allowance for Tasks has reset"
    with translation.override("ja"):
        assert "5時間" in notice_text(notice)[0]


# A notice the sender cannot write is set aside; the others go -------------------------------------------


def test_a_notice_of_an_unknown_kind_is_set_aside_and_the_others_are_sent(settings, caplog):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    org, _, _, _ = team_org()
    Membership.objects.filter(organization=org).exclude(role=Role.OWNER).delete()
    # Given a kind this release does not know (written by a newer one, or removed) between two it knows
    pending(org, [NoticeKind.CREDITS_LOW], tag="before")
    unknown = Notice.objects.create(
        organization=org, kind="credits_expiring", dedupe_key="new", payload={"credits": "5"}, created_at=T0
    )
    pending(org, [NoticeKind.CREDITS_DEPLETED], tag="after")
    # When the sender runs
    with caplog.at_level(logging.ERROR, logger="usage.services.notices"):
        assert notices_send_pending(now=T0 + H) == 2
    # Then the two it knows are emailed, and the other is logged with its id and kind and stamped unsent
    assert [(m.to, m.subject) for m in mail.outbox] == [
        (["olga@example.com"], "Your credit balance is low (5 credits)"),
        (["olga@example.com"], "You are out of credits"),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        f"notice {unknown.pk} set aside unsent: kind 'credits_expiring' has no category"
    ]
    stamps = list(Notice.objects.filter(organization=org).order_by("id").values_list("kind", "sent_at"))
    assert stamps == [("credits_low", T0 + H), ("credits_expiring", T0 + H), ("credits_depleted", T0 + H)]
    # And the task, run twice more, changes nothing
    assert (tasks.notices_send_pending(), tasks.notices_send_pending()) == (0, 0)
    assert len(mail.outbox) == 2
    assert list(Notice.objects.filter(organization=org).order_by("id").values_list("kind", "sent_at")) == stamps


def test_a_notice_whose_payload_cannot_be_read_is_set_aside_before_any_reader_gets_it(settings, caplog):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    org, _, _, _ = team_org()
    speakers(org, olga="ja", ada="en")
    # Given a threshold notice without its percent, between two good ones
    pending(org, [NoticeKind.CREDITS_DEPLETED], tag="before")
    broken = {k: v for k, v in PAYLOADS[NoticeKind.WINDOW_THRESHOLD].items() if k != "percent"}
    bad = Notice.objects.create(
        organization=org, kind=NoticeKind.WINDOW_THRESHOLD, dedupe_key="bad", payload=broken, created_at=T0
    )
    pending(org, [NoticeKind.CREDITS_DEPLETED], tag="after")

    with caplog.at_level(logging.ERROR, logger="usage.services.notices"):
        assert notices_send_pending(now=T0) == 2

    # Then neither reader got the broken one (in any language), and the good ones went to both
    assert [(m.to, m.subject) for m in mail.outbox] == [
        (["olga@example.com"], "クレジット残高がなくなりました"),
        (["ada@example.com"], "You are out of credits"),
    ] * 2
    assert [r.getMessage() for r in caplog.records] == [
        f"notice {bad.pk} set aside unsent: kind 'window_threshold' could not be written"
    ]
    assert Notice.objects.get(pk=bad.pk).sent_at == T0
    assert notices_send_pending(now=T0 + H) == 0
    assert len(mail.outbox) == 4


def test_a_kind_without_a_message_is_an_error_not_another_kinds_email():
    org, _, _ = period_org()
    notice = Notice(organization=org, kind="credits_expiring", dedupe_key="x", payload={"balance": "0"})
    with pytest.raises(ValueError, match="no message for notice kind 'credits_expiring'"):
        notice_text(notice)


# Times: each reader's time zone, named next to the time ---------------------------------------------------


def zones(org, **names: str) -> None:
    for name, zone in names.items():
        User.objects.filter(memberships__organization=org, email__startswith=name).update(timezone=zone)


def test_times_are_written_in_each_readers_time_zone_with_its_name(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    org, _, _, mia = team_org()
    notification_preferences_set(membership=mia, choices={"usage_alerts": True}, now=T0)
    # Given the owner reads Japanese in Tokyo, the admin English in UTC, the member English in Tokyo
    speakers(org, olga="ja", ada="en", mia="en")
    zones(org, olga="Asia/Tokyo", ada="UTC", mia="Asia/Tokyo")
    pending(org, [NoticeKind.WINDOW_THRESHOLD], tag="t")  # resets at 2026-02-15 12:00 UTC
    # When the notice is sent
    assert notices_send_pending(now=T0) == 1
    # Then there is one email per (language, zone), each with the time in its readers' zone and the zone's name
    link = f"{settings.PUBLIC_BASE_URL}/orgs/{org.pk}/"
    assert [(m.to, m.body) for m in mail.outbox] == [
        (
            ["olga@example.com"],
            "組織は Tasks の利用枠（5時間、上限 4）の 50% を使用しました。"
            "2026年2月15日 21:00 Asia/Tokyo にリセットされます。\n\n"
            f"利用枠を超えた分はクレジットで支払われます。利用状況はこちら: {link}",
        ),
        (
            ["ada@example.com"],
            "Your organization has used 50% of its 5 hours allowance for Tasks (limit 4)."
            " It resets at 2026-02-15 12:00 UTC.\n\n"
            f"Past the allowance, usage is paid with credits. See your usage: {link}",
        ),
        (
            ["mia@example.com"],
            "Your organization has used 50% of its 5 hours allowance for Tasks (limit 4)."
            " It resets at 2026-02-15 21:00 Asia/Tokyo.\n\n"
            f"Past the allowance, usage is paid with credits. See your usage: {link}",
        ),
    ]


def test_a_reset_time_moves_to_the_readers_day_and_a_reader_without_a_zone_gets_the_sites(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.TIME_ZONE = "America/New_York"
    org, _, _, _ = team_org()
    Membership.objects.filter(organization=org, role=Role.MEMBER).delete()
    # Given the owner is in Tokyo and the admin stored no time zone, on a site in New York
    speakers(org, olga="ja")
    zones(org, olga="Asia/Tokyo", ada="")
    payload = {**PAYLOADS[NoticeKind.ALLOWANCE_RESET], "reset_at": "2026-02-15T20:30:00+00:00"}
    Notice.objects.create(
        organization=org, kind=NoticeKind.ALLOWANCE_RESET, dedupe_key="r", payload=payload, created_at=T0
    )

    assert notices_send_pending(now=T0) == 1

    link = f"{settings.PUBLIC_BASE_URL}/orgs/{org.pk}/"
    assert [(m.to, m.body) for m in mail.outbox] == [
        (
            ["olga@example.com"],
            "Tasks の利用枠（5時間）が 2026年2月16日 05:30 Asia/Tokyo にリセットされ、4 を再び使えるようになりました。"
            f"\n\n{link}",
        ),
        (
            ["ada@example.com"],
            "Your 5 hours allowance for Tasks reset at 2026-02-15 15:30 America/New_York: 4 available again."
            f"\n\n{link}",
        ),
    ]
