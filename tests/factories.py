"""factory_boy factories and small builders shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import factory

from accounts.models import Membership, Organization, Role, User
from billing.models import CreditAccount
from plans.models import Meter, Plan, PlanAllowance, Product, Subscription, WindowKind
from plans.selectors import catalogue_clear

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")

    @factory.post_generation
    def password(self, create: bool, extracted: str | None, **kwargs: object) -> None:
        self.set_password(extracted or "pw-123456789")
        if create:
            self.save(update_fields=["password"])


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product
        django_get_or_create = ("key",)

    key = "codex"
    name = "Codex"


class MeterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Meter

    product = factory.SubFactory(ProductFactory)
    key = factory.Sequence(lambda n: f"meter.{n}")
    name = factory.Sequence(lambda n: f"Meter {n}")
    unit = "task"
    unit_plural = "tasks"
    credits_per_unit = Decimal("5")


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Plan

    key = factory.Sequence(lambda n: f"plan-{n}")
    name = factory.Sequence(lambda n: f"Plan {n}")
    price_amount = 2000


class AllowanceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PlanAllowance

    plan = factory.SubFactory(PlanFactory)
    meter = factory.SubFactory(MeterFactory)
    limit = Decimal("10")
    window_kind = WindowKind.PERIOD
    window_seconds = None


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")


def make_org(
    *,
    plan: Plan,
    anchor: datetime = T0,
    owner: User | None = None,
    timezone: str = "UTC",
    balance_cap: Decimal | None = None,
) -> Organization:
    """An organization on `plan` (anchored at `anchor`) with its credit account and, if given, an owner."""
    org = OrganizationFactory(timezone=timezone)
    Subscription.objects.create(organization=org, plan=plan, anchor=anchor)
    CreditAccount.objects.create(organization=org, monthly_spend_cap=balance_cap)
    if owner is not None:
        Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
    catalogue_clear()
    return org
