"""Who may get which email: the category of every notice kind, and each role's defaults and limits.

The notices are defined above accounts (usage.models.NoticeKind, billing.models.BillingNoticeKind),
which accounts may not import, so their kinds are named here by value. This is the one place that
maps them: tests/accounts/test_notifications.py fails when a kind has no category.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from django.utils import timezone, translation
from django.utils.translation import gettext_lazy as _

from accounts.models import NotificationCategory, Role

if TYPE_CHECKING:
    from django.utils.functional import _StrPromise

C = NotificationCategory

CATEGORY_BY_KIND: Final[dict[str, NotificationCategory]] = {
    # usage.models.NoticeKind
    "window_threshold": C.USAGE_ALERTS,
    "allowance_reset": C.ALLOWANCE_RESETS,
    "credits_low": C.CREDIT_BALANCE,
    "credits_depleted": C.CREDIT_BALANCE,
    # billing.models.BillingNoticeKind
    "plan_started": C.RECEIPTS,
    "topup_succeeded": C.AUTO_TOPUP,
    "renewal_succeeded": C.RENEWALS,
    "topup_failed": C.PAYMENT_PROBLEMS,
    "topup_disabled": C.PAYMENT_PROBLEMS,
    "renewal_failed": C.PAYMENT_PROBLEMS,
    "plan_downgraded": C.PAYMENT_PROBLEMS,
}

# Members may opt in to these; every other category is about money and only for owners and admins.
MEMBER_CATEGORIES: Final = frozenset({C.USAGE_ALERTS, C.ALLOWANCE_RESETS})
# Charges and payment failures always reach owners: someone must hear that money moved or did not.
OWNER_LOCKED_CATEGORIES: Final = frozenset({C.RECEIPTS, C.AUTO_TOPUP, C.RENEWALS, C.PAYMENT_PROBLEMS})
MANAGER_ROLES: Final = frozenset({Role.OWNER, Role.ADMIN})


@dataclass(frozen=True, slots=True)
class CategoryInfo:
    group: str  # "usage" or "billing": one fieldset each on the page
    description: _StrPromise


CATEGORY_INFO: Final[dict[NotificationCategory, CategoryInfo]] = {
    C.USAGE_ALERTS: CategoryInfo("usage", _("When your organization reaches 50, 80 and 100 percent of an allowance.")),
    C.ALLOWANCE_RESETS: CategoryInfo("usage", _("When a used allowance starts over and is available again.")),
    C.CREDIT_BALANCE: CategoryInfo("usage", _("When the credit balance runs low, and when it runs out.")),
    C.RECEIPTS: CategoryInfo("billing", _("A receipt when a paid plan starts, with the amount and the card charged.")),
    C.AUTO_TOPUP: CategoryInfo("billing", _("An email for every automatic top-up charge.")),
    C.RENEWALS: CategoryInfo("billing", _("A receipt each time a paid plan renews.")),
    C.PAYMENT_PROBLEMS: CategoryInfo(
        "billing",
        _(
            "When a renewal or an automatic top-up fails, when automatic top-up turns itself off after failed "
            "charges, and when a plan ends because it could not be paid."
        ),
    ),
}


def category_for_kind(kind: str) -> NotificationCategory | None:
    """The category of a usage or billing notice kind; None for a kind nobody mapped (one a newer
    release stored: the senders set such a notice aside)."""
    return CATEGORY_BY_KIND.get(kind)


def categories_offered(role: str) -> list[NotificationCategory]:
    """The categories a role may receive, in the page's order."""
    if role in MANAGER_ROLES:
        return list(NotificationCategory)
    return [c for c in NotificationCategory if c in MEMBER_CATEGORIES]


def category_locked(role: str, category: str) -> bool:
    """Always on for this role, whatever was saved."""
    return role == Role.OWNER and category in OWNER_LOCKED_CATEGORIES


def category_editable(role: str, category: str) -> bool:
    return category in categories_offered(role) and not category_locked(role, category)


def category_default(role: str, category: str) -> bool:
    """Without a saved choice, owners and admins get every email they may get; members none."""
    return role in MANAGER_ROLES


def receives(*, role: str, category: str, choice: bool | None) -> bool:
    """Whether someone with `role` gets emails of `category`, given their saved choice (None: none saved)."""
    if category not in categories_offered(role):
        return False
    if category_locked(role, category):
        return True
    return category_default(role, category) if choice is None else choice


class Recipient(NamedTuple):
    email: str
    language: str  # theirs when they chose one we offer, else the site's (settings.LANGUAGE_CODE)
    timezone: str  # an IANA name: theirs (User.timezone) when it is a zone we know, else settings.TIME_ZONE


def emails_by_reader(recipients: Iterable[Recipient]) -> dict[tuple[str, str], list[str]]:
    """The addresses to write to in each (language, time zone): one email per pair, each in its readers'
    language and with times in their zone; pairs in the order of their first recipient."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for recipient in recipients:
        grouped.setdefault((recipient.language, recipient.timezone), []).append(recipient.email)
    return grouped


@contextmanager
def reading_as(language: str, zone: str) -> Iterator[None]:
    """The active language and time zone of one group of readers (a key of emails_by_reader)."""
    with translation.override(language), timezone.override(zoneinfo.ZoneInfo(zone)):
        yield
