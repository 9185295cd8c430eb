"""Load the demo catalogue (Codex- and Sora-like) and demo people. Safe to run again."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import Membership, Role, User
from accounts.selectors import service_token_by_hash
from accounts.services import membership_set, secret_hash, service_token_replace
from billing.models import CreditLot, CreditPack, LotCategory
from billing.services import credits_grant
from billing.services.provision import organization_setup, user_signup
from core.clock import now
from plans.models import Meter, Plan, PlanAllowance, Product, WindowKind
from plans.selectors import catalogue_clear

HOUR = 3600
DAY = 86400

PRODUCTS = [("codex", "Codex"), ("sora", "Sora")]
METERS = [
    # key, product, name, unit, plural, credits per unit
    ("codex.local_task", "codex", "Codex local tasks", "task", "tasks", "5"),
    ("codex.cloud_task", "codex", "Codex cloud tasks", "task", "tasks", "25"),
    ("sora.video_second", "sora", "Sora video", "second", "seconds", "10"),
]
PLANS = [
    # key, name, price (cents), default, allowances: (meter, limit, kind, seconds, overage)
    (
        "free",
        "Free",
        0,
        True,
        [
            ("codex.local_task", "10", WindowKind.ROLLING, 5 * HOUR, "credits"),
            ("codex.local_task", "40", WindowKind.ROLLING, 7 * DAY, "credits"),
            ("codex.cloud_task", "2", WindowKind.ROLLING, 5 * HOUR, "credits"),
            ("codex.cloud_task", "10", WindowKind.ROLLING, 7 * DAY, "credits"),
            ("sora.video_second", "0", WindowKind.PERIOD, None, "block"),
        ],
    ),
    (
        "plus",
        "Plus",
        2000,
        False,
        [
            ("codex.local_task", "45", WindowKind.ROLLING, 5 * HOUR, "credits"),
            ("codex.local_task", "225", WindowKind.ROLLING, 7 * DAY, "credits"),
            ("codex.cloud_task", "10", WindowKind.ROLLING, 5 * HOUR, "credits"),
            ("codex.cloud_task", "50", WindowKind.ROLLING, 7 * DAY, "credits"),
            ("sora.video_second", "600", WindowKind.PERIOD, None, "credits"),
        ],
    ),
    (
        "pro",
        "Pro",
        20000,
        False,
        [
            ("codex.local_task", "300", WindowKind.ROLLING, 5 * HOUR, "credits"),
            ("codex.local_task", "1500", WindowKind.ROLLING, 7 * DAY, "credits"),
            ("codex.cloud_task", "60", WindowKind.ROLLING, 5 * HOUR, "credits"),
            ("codex.cloud_task", "300", WindowKind.ROLLING, 7 * DAY, "credits"),
            ("sora.video_second", "6000", WindowKind.PERIOD, None, "credits"),
        ],
    ),
]
PACKS = [
    # key, name, credits, price minor units, currency
    ("credits-1000", "1,000 credits", "1000", 4000, "usd"),
    ("credits-2500", "2,500 credits", "2500", 10000, "usd"),
    ("credits-1000-jpy", "1,000 クレジット", "1000", 6000, "jpy"),
]
DEMO_PASSWORD = "demo-password-123"
ADMIN_PASSWORD = "admin-password-123"


class Command(BaseCommand):
    help = "Load the demo catalogue, plans, packs and demo users (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--catalogue-only", action="store_true", help="Only products, meters, plans and packs")

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            seed_catalogue()
            if not options["catalogue_only"]:
                self.seed_people()
        catalogue_clear()
        self.stdout.write(self.style.SUCCESS("Demo data is loaded."))

    def seed_people(self) -> None:
        at = now()
        if not User.objects.filter(email="admin@example.com").exists():
            User.objects.create_superuser("admin@example.com", ADMIN_PASSWORD, name="Admin")
        demo = User.objects.filter(email="demo@example.com").first()
        if demo is None:
            demo, org = user_signup(email="demo@example.com", password=DEMO_PASSWORD, name="Demo", now=at)
            org.name = "Demo Org"
            org.save(update_fields=["name"])
        org = Membership.objects.get(user=demo, organization__is_personal=True).organization
        organization_setup(organization=org, plan_key="plus", now=at)
        if org.subscription.plan.key != "plus":
            from billing.services import subscription_change

            subscription_change(organization_id=org.pk, plan_key="plus", now=at)
        if not CreditLot.objects.filter(organization=org, external_ref="demo:welcome").exists():
            credits_grant(
                organization_id=org.pk,
                credits=Decimal("500"),
                now=at,
                category=LotCategory.PROMOTIONAL,
                reason="Welcome credits",
                external_ref="demo:welcome",
            )
        member = User.objects.filter(email="member@example.com").first()
        if member is None:
            member, _ = user_signup(email="member@example.com", password=DEMO_PASSWORD, name="Member", now=at)
        membership_set(organization=org, user=member, role=Role.MEMBER)
        # The saved secret must open this database: the file outlives it (another DATABASE_URL, a reset).
        path = settings.VAR_DIR / "demo-service-token.txt"
        saved = path.read_text().strip() if path.exists() else ""
        if not saved or service_token_by_hash(secret_hash(saved)) is None:
            _, secret = service_token_replace(name="demo", scope="admin")
            path.write_text(secret + "\n")
            self.stdout.write(f"Demo service token (admin scope), saved in {path}: {secret}")


def seed_catalogue() -> None:
    products = {key: Product.objects.update_or_create(key=key, defaults={"name": name})[0] for key, name in PRODUCTS}
    meters = {}
    for key, product, name, unit, plural, cpu in METERS:
        meters[key] = Meter.objects.update_or_create(
            key=key,
            defaults={
                "product": products[product],
                "name": name,
                "unit": unit,
                "unit_plural": plural,
                "credits_per_unit": Decimal(cpu),
            },
        )[0]
    for order, (key, name, price, default, allowances) in enumerate(PLANS):
        plan = Plan.objects.update_or_create(
            key=key,
            defaults={
                "name": name,
                "price_amount": price,
                "currency": "usd",
                "is_default": default,
                "sort_order": order,
            },
        )[0]
        for meter_key, limit, kind, seconds, overage in allowances:
            PlanAllowance.objects.update_or_create(
                plan=plan,
                meter=meters[meter_key],
                window_kind=kind,
                window_seconds=seconds,
                defaults={"limit": Decimal(limit), "overage": overage},
            )
    for order, (key, name, credits, price, currency) in enumerate(PACKS):
        CreditPack.objects.update_or_create(
            key=key,
            defaults={
                "name": name,
                "credits": Decimal(credits),
                "price_amount": price,
                "currency": currency,
                "sort_order": order,
            },
        )
