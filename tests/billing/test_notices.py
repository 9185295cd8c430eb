"""Billing emails: each goes, once, to the people who get its category (accounts' notification
preferences): owners always get payment emails, admins unless they opted out, members never."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone, translation

from accounts.models import Membership, Role, User
from accounts.services import notification_preferences_set, organization_create
from billing import tasks
from billing.emails import billing_notice_text
from billing.models import BillingNotice, BillingNoticeKind
from billing.services.notices import billing_notice_add, billing_notices_send
from tests.factories import T0

pytestmark = pytest.mark.django_db

K = BillingNoticeKind


@pytest.fixture(autouse=True)
def _locmem(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


def team(suffix: str = ""):
    """Owner Olga, admin Ada, member Mia (in that order), and an admin whose account is deactivated."""
    org = organization_create(name="Acme", owner=User.objects.create_user(email=f"olga{suffix}@example.com"))
    people = {}
    for name, role, active in (("ada", Role.ADMIN, True), ("mia", Role.MEMBER, True), ("gone", Role.ADMIN, False)):
        user = User.objects.create_user(email=f"{name}{suffix}@example.com", is_active=active)
        people[name] = Membership.objects.create(organization=org, user=user, role=role)
    people["olga"] = org.memberships.get(role=Role.OWNER)
    return org, people


def add(org, kinds, *, tag: str = "n") -> None:
    for i, kind in enumerate(kinds):
        billing_notice_add(
            organization_id=org.pk, kind=kind, dedupe_key=f"{tag}:{i}", subject=f"{kind} {i}", body="...", now=T0
        )


def test_by_default_every_billing_email_goes_to_the_active_owners_and_admins():
    org, _ = team()
    add(org, K.values)

    assert billing_notices_send(now=T0) == len(K.values)

    assert [(m.subject, m.to) for m in mail.outbox] == [
        (f"{kind} {i}", ["olga@example.com", "ada@example.com"]) for i, kind in enumerate(K.values)
    ]


def test_an_admin_who_opted_out_is_left_out_but_owners_always_get_payment_emails():
    org, people = team()
    # Ada turns off receipts and payment problems; Olga turns off what she may (none of these kinds)
    notification_preferences_set(
        membership=people["ada"], choices={"receipts": False, "payment_problems": False}, now=T0
    )
    notification_preferences_set(membership=people["olga"], choices={"credit_balance": False}, now=T0)
    # a member who opted in to every usage email still gets no billing email
    notification_preferences_set(
        membership=people["mia"], choices={"usage_alerts": True, "allowance_resets": True}, now=T0
    )
    add(org, [K.PLAN_STARTED, K.TOPUP_SUCCEEDED, K.RENEWAL_SUCCEEDED, K.RENEWAL_FAILED, K.TOPUP_DISABLED])

    assert billing_notices_send(now=T0) == 5

    owner, managers = ["olga@example.com"], ["olga@example.com", "ada@example.com"]
    assert [(m.subject, m.to) for m in mail.outbox] == [
        ("plan_started 0", owner),
        ("topup_succeeded 1", managers),
        ("renewal_succeeded 2", managers),
        ("renewal_failed 3", owner),
        ("topup_disabled 4", owner),
    ]
    assert list(BillingNotice.objects.values_list("sent_at", flat=True).distinct()) == [T0]


def test_sending_runs_the_same_queries_for_one_notice_or_many():
    org, people = team()
    notification_preferences_set(membership=people["ada"], choices={"auto_topup": False}, now=T0)
    add(org, [K.TOPUP_SUCCEEDED], tag="one")
    with CaptureQueriesContext(connection) as one:
        assert billing_notices_send(now=T0) == 1
    # Given five organizations with their people and preferences, and every kind of notice for each
    add(org, K.values, tag="many")
    for i in range(4):
        other, others = team(suffix=str(i))
        notification_preferences_set(membership=others["ada"], choices={"renewals": False}, now=T0)
        add(other, K.values, tag="many")
    mail.outbox.clear()
    # When they are sent, then the sender runs the same queries as for one
    with CaptureQueriesContext(connection) as many:
        assert billing_notices_send(now=T0) == 5 * len(K.values)
    assert len(many.captured_queries) == len(one.captured_queries)
    # one email per notice: to the owner alone where the admin opted out (auto top-up in the first
    # organization, renewals in the others), else to both
    assert sorted(len(m.to) for m in mail.outbox) == [1] * 5 + [2] * (5 * len(K.values) - 5)


# Languages: each email in its readers' language -------------------------------------------------------

PARAMS: dict[str, dict[str, Any]] = {
    K.TOPUP_SUCCEEDED: {
        "credits": "1625.5",
        "amount": 16255,
        "currency": "usd",
        "min_balance": "50",
        "cap_amount": 50000,
        "card_brand": "visa",
        "card_last4": "4242",
    },
    K.TOPUP_FAILED: {"reason": "Your card has insufficient funds.", "failures": 2, "max_failures": 3},
    K.TOPUP_DISABLED: {"failures": 3},
    K.PLAN_STARTED: {
        "plan": "Pro",
        "amount": 6000,
        "currency": "jpy",
        "card_brand": "",
        "card_last4": "",
        "start": "2026-01-15T12:00:00+00:00",
        "end": "2026-02-15T12:00:00+00:00",
    },
    K.RENEWAL_SUCCEEDED: {
        "plan": "Pro",
        "amount": 2800,
        "currency": "usd",
        "card_brand": "",
        "card_last4": "4242",
        "start": "2026-02-15T12:00:00+00:00",
        "end": "2026-03-14T23:30:00-01:00",  # stored with an offset: written in UTC
    },
    K.RENEWAL_FAILED: {
        "plan": "Pro",
        "amount": 2800,
        "currency": "usd",
        "reason": "Your card was declined.",
        "retry_at": "2026-02-16T12:00:00+00:00",
        "max_attempts": 3,
    },
    K.PLAN_DOWNGRADED: {"plan": "Pro", "failures": 3, "reason": "Your card was declined.", "fallback": "Free"},
}


def add_with_params(org, kinds, *, tag: str = "p") -> None:
    for i, kind in enumerate(kinds):
        billing_notice_add(organization_id=org.pk, kind=kind, dedupe_key=f"{tag}:{i}", params=PARAMS[kind], now=T0)


def speakers(**languages: str) -> None:
    for name, language in languages.items():
        User.objects.filter(email=f"{name}@example.com").update(language=language)


def test_a_billing_email_goes_to_each_reader_in_their_language_and_is_stored_in_the_sites():
    org, _ = team()
    # Given the owner reads Japanese and the admin English, and a renewal failed during a Japanese request
    speakers(olga="ja", ada="en")
    with translation.override("ja"):
        add_with_params(org, [K.RENEWAL_FAILED])
    # Then the notice is stored in the site's language, for the admin pages
    notice = BillingNotice.objects.get(organization=org)
    assert notice.subject == "We could not renew your Pro plan"
    # When it is sent
    assert billing_notices_send(now=T0) == 1
    # Then the owner gets it in Japanese and the admin in English
    ja, en = mail.outbox
    assert (ja.to, ja.subject) == (["olga@example.com"], "Pro プランを更新できませんでした")
    assert ja.body == (
        "Pro プラン（$28.00）の更新に失敗しました: カードが拒否されました。"
        "2026年2月16日 12:00 UTC にもう一度請求を試みます。"
        "3 回失敗すると無料プランに移ります。「お支払い方法」ページでカードを更新してください。"
    )
    assert (en.to, en.subject) == (["ada@example.com"], "We could not renew your Pro plan")
    assert (
        en.body
        == notice.body
        == (
            "The renewal of your Pro plan (28.00 USD) failed: Your card was declined. "
            "We will try again on 2026-02-16 12:00 UTC. After 3 failed attempts you move to the free plan. "
            "Update your card on the Payment methods page."
        )
    )


def test_every_kind_of_billing_email_reads_in_english_and_in_japanese():
    org, people = team()
    Membership.objects.filter(pk=people["mia"].pk).delete()
    speakers(olga="ja")  # Ada chose no language: the site's, English
    add_with_params(org, K.values)

    assert billing_notices_send(now=T0) == len(K.values)

    ja = {m.subject: m.body for m in mail.outbox if m.to == ["olga@example.com"]}
    en = {m.subject: m.body for m in mail.outbox if m.to == ["ada@example.com"]}
    assert en == {
        "Auto top-up: 1,625.5 credits for 162.55 USD": (
            "Your balance fell below 50 credits, so we bought 1,625.5 credits for 162.55 USD with your visa ending "
            "in 4242.\n\nMonthly limit for automatic top-ups: 500.00 USD. You can turn automatic top-up off on the "
            "Credits page."
        ),
        "Auto top-up failed": (
            "We could not top up your credits: Your card has insufficient funds.\n\nThis is failure 2 of 3 in a row; "
            "after 3, automatic top-up turns itself off. Check your card on the Credits page."
        ),
        "Auto top-up is turned off": (
            "Automatic top-up failed 3 times in a row, so we turned it off. No more charges will be tried. Update "
            "your card, then turn automatic top-up on again on the Credits page."
        ),
        "Welcome to the Pro plan": (
            "We charged 6000 JPY to your card on file. Your Pro plan runs from 2026-01-15 to 2026-02-15 (UTC), and "
            "renews then with the card on file."
        ),
        "Your Pro plan is renewed": (
            "We charged 28.00 USD to your card ending in 4242 for your Pro plan, from 2026-02-15 to 2026-03-15 (UTC)."
        ),
        "We could not renew your Pro plan": (
            "The renewal of your Pro plan (28.00 USD) failed: Your card was declined. We will try again on "
            "2026-02-16 12:00 UTC. After 3 failed attempts you move to the free plan. Update your card on the "
            "Payment methods page."
        ),
        "Your Pro plan has ended": (
            "We could not renew your Pro plan after 3 attempts (Your card was declined.). You are now on the Free "
            "plan. Your credits are kept. Choose a paid plan again at any time."
        ),
    }
    assert ja == {
        "自動チャージ: 1,625.5 クレジットを $162.55 で購入しました": (
            "クレジット残高が 50 クレジットを下回ったため、visa（末尾 4242）で 1,625.5 クレジットを $162.55 で"
            "購入しました。\n\n自動チャージの月間上限: $500.00。自動チャージは「クレジット」ページでオフにできます。"
        ),
        "自動チャージに失敗しました": (
            "クレジットを自動チャージできませんでした: カードの残高（利用可能枠）が不足しています。\n\n"
            "連続 2 回目の失敗です。3 回続けて失敗すると、自動チャージは自動的にオフになります。"
            "「クレジット」ページでカードを確認してください。"
        ),
        "自動チャージがオフになりました": (
            "自動チャージが 3 回続けて失敗したため、オフにしました。今後は請求を試みません。"
            "カードを更新してから、「クレジット」ページで自動チャージをもう一度オンにしてください。"
        ),
        "Pro プランへようこそ": (
            "登録済みのカードに 6,000円 を請求しました。Pro プランの期間は 2026年1月15日 から 2026年2月15日（UTC）"
            "までで、その時点で登録済みのカードにより更新されます。"
        ),
        "Pro プランを更新しました": (
            "Pro プランの 2026年2月15日 から 2026年3月15日（UTC）までの料金として、カード（末尾 4242）に $28.00 を"
            "請求しました。"
        ),
        "Pro プランを更新できませんでした": (
            "Pro プラン（$28.00）の更新に失敗しました: カードが拒否されました。"
            "2026年2月16日 12:00 UTC にもう一度請求を試みます。"
            "3 回失敗すると無料プランに移ります。「お支払い方法」ページでカードを更新してください。"
        ),
        "Pro プランが終了しました": (
            "3 回試みましたが、Pro プランを更新できませんでした（カードが拒否されました。）。現在は Free プランです。"
            "クレジットはそのまま残ります。有料プランはいつでも選び直せます。"
        ),
    }


def test_a_notice_with_fixed_text_goes_once_as_stored_whatever_the_languages():
    org, _ = team()
    speakers(olga="ja", ada="en")
    # a row from before notices had params
    BillingNotice.objects.create(
        organization=org, kind=K.TOPUP_FAILED, dedupe_key="old", subject="Auto top-up failed", body="b", created_at=T0
    )

    assert billing_notices_send(now=T0) == 1

    assert [(m.to, m.subject, m.body) for m in mail.outbox] == [
        (["olga@example.com", "ada@example.com"], "Auto top-up failed", "b")
    ]


def test_a_failed_renewal_with_no_attempt_left_asks_for_a_new_card():
    params = {**PARAMS[K.RENEWAL_FAILED], "retry_at": None}

    assert billing_notice_text(kind=K.RENEWAL_FAILED, params=params)[1] == (
        "The renewal of your Pro plan (28.00 USD) failed: Your card was declined. Update your card to keep your plan. "
        "After 3 failed attempts you move to the free plan. Update your card on the Payment methods page."
    )
    with translation.override("ja"):
        assert billing_notice_text(kind=K.RENEWAL_FAILED, params=params)[1] == (
            "Pro プラン（$28.00）の更新に失敗しました: カードが拒否されました。"
            "プランを続けるには、カードを更新してください。"
            "3 回失敗すると無料プランに移ります。「お支払い方法」ページでカードを更新してください。"
        )


# A notice the sender cannot write is set aside; the others go -------------------------------------------


def test_a_billing_notice_of_an_unknown_kind_is_set_aside_and_the_others_are_sent(caplog):
    org, _ = team()
    # Given a kind this release does not know (written by a newer one, or removed) between two it knows
    add(org, [K.TOPUP_FAILED], tag="before")
    billing_notice_add(organization_id=org.pk, kind="refund_issued", dedupe_key="new", subject="s", body="b", now=T0)
    add(org, [K.TOPUP_DISABLED], tag="after")
    unknown = BillingNotice.objects.get(kind="refund_issued")
    # When the sender runs
    with caplog.at_level(logging.ERROR, logger="billing.services.notices"):
        assert billing_notices_send(now=T0) == 2
    # Then the two it knows are emailed, and the other is logged with its id and kind and stamped unsent
    managers = ["olga@example.com", "ada@example.com"]
    assert [(m.subject, m.to) for m in mail.outbox] == [("topup_failed 0", managers), ("topup_disabled 0", managers)]
    assert [r.getMessage() for r in caplog.records] == [
        f"billing notice {unknown.pk} set aside unsent: kind 'refund_issued' has no category"
    ]
    stamps = list(BillingNotice.objects.order_by("id").values_list("kind", "sent_at"))
    assert stamps == [("topup_failed", T0), ("refund_issued", T0), ("topup_disabled", T0)]
    # And the task, run twice more, changes nothing
    assert (tasks.billing_notices_send(), tasks.billing_notices_send()) == (0, 0)
    assert len(mail.outbox) == 2
    assert list(BillingNotice.objects.order_by("id").values_list("kind", "sent_at")) == stamps


def test_a_billing_notice_whose_params_cannot_be_read_is_set_aside_before_any_reader_gets_it(caplog):
    org, _ = team()
    speakers(olga="ja", ada="en")
    add_with_params(org, [K.TOPUP_DISABLED], tag="before")
    broken = {k: v for k, v in PARAMS[K.RENEWAL_FAILED].items() if k != "plan"}
    bad = BillingNotice.objects.create(
        organization=org, kind=K.RENEWAL_FAILED, dedupe_key="bad", subject="s", body="b", params=broken, created_at=T0
    )
    add_with_params(org, [K.TOPUP_DISABLED], tag="after")

    with caplog.at_level(logging.ERROR, logger="billing.services.notices"):
        assert billing_notices_send(now=T0) == 2

    assert [(m.to, m.subject) for m in mail.outbox] == [
        (["olga@example.com"], "自動チャージがオフになりました"),
        (["ada@example.com"], "Auto top-up is turned off"),
    ] * 2
    assert [r.getMessage() for r in caplog.records] == [
        f"billing notice {bad.pk} set aside unsent: kind 'renewal_failed' could not be written"
    ]
    assert BillingNotice.objects.get(pk=bad.pk).sent_at == T0
    assert billing_notices_send(now=T0) == 0
    assert len(mail.outbox) == 4


# Times: each reader's time zone, named next to the time ---------------------------------------------------


def test_billing_times_are_written_in_each_readers_time_zone_and_stored_in_the_sites():
    org, people = team()
    Membership.objects.filter(pk=people["mia"].pk).delete()
    ken = User.objects.create_user(email="ken@example.com", language="en", timezone="Asia/Tokyo")
    Membership.objects.create(organization=org, user=ken, role=Role.ADMIN)
    # Given the owner reads Japanese in Tokyo, an admin English in UTC, another English in Tokyo
    speakers(olga="ja", ada="en")
    User.objects.filter(email="olga@example.com").update(timezone="Asia/Tokyo")
    User.objects.filter(email="ada@example.com").update(timezone="UTC")
    # and the notices were written during a request shown in Tokyo time
    started = {**PARAMS[K.PLAN_STARTED], "start": "2026-01-15T20:00:00+00:00", "end": "2026-02-15T20:00:00+00:00"}
    with timezone.override("Asia/Tokyo"):
        billing_notice_add(organization_id=org.pk, kind=K.PLAN_STARTED, dedupe_key="s", params=started, now=T0)
        add_with_params(org, [K.RENEWAL_FAILED])  # retry at 2026-02-16 12:00 UTC
    # Then they are stored in the site's zone, for the admin pages
    assert [n.body for n in BillingNotice.objects.order_by("id")] == [
        "We charged 6000 JPY to your card on file. Your Pro plan runs from 2026-01-15 to 2026-02-15 (UTC), and "
        "renews then with the card on file.",
        "The renewal of your Pro plan (28.00 USD) failed: Your card was declined. We will try again on "
        "2026-02-16 12:00 UTC. After 3 failed attempts you move to the free plan. Update your card on the "
        "Payment methods page.",
    ]
    # When they are sent
    assert billing_notices_send(now=T0) == 2
    # Then each reader gets the days and times of their zone, with the zone's name
    welcome, failed = mail.outbox[:3], mail.outbox[3:]
    assert [(m.to, m.body) for m in welcome if m.to != ["olga@example.com"]] == [
        (
            ["ada@example.com"],
            "We charged 6000 JPY to your card on file. Your Pro plan runs from 2026-01-15 to 2026-02-15 (UTC), and "
            "renews then with the card on file.",
        ),
        (
            ["ken@example.com"],
            "We charged 6000 JPY to your card on file. Your Pro plan runs from 2026-01-16 to 2026-02-16 "
            "(Asia/Tokyo), and renews then with the card on file.",
        ),
    ]
    assert [(m.to, m.body) for m in failed] == [
        (
            ["olga@example.com"],
            "Pro プラン（$28.00）の更新に失敗しました: カードが拒否されました。"
            "2026年2月16日 21:00 Asia/Tokyo にもう一度請求を試みます。"
            "3 回失敗すると無料プランに移ります。「お支払い方法」ページでカードを更新してください。",
        ),
        (
            ["ada@example.com"],
            "The renewal of your Pro plan (28.00 USD) failed: Your card was declined. We will try again on "
            "2026-02-16 12:00 UTC. After 3 failed attempts you move to the free plan. Update your card on the "
            "Payment methods page.",
        ),
        (
            ["ken@example.com"],
            "The renewal of your Pro plan (28.00 USD) failed: Your card was declined. We will try again on "
            "2026-02-16 21:00 Asia/Tokyo. After 3 failed attempts you move to the free plan. Update your card on "
            "the Payment methods page.",
        ),
    ]
