"""Seed the bench database: 1,000 organizations on the plus plan with plenty of credits, and a token.

Run after `manage.py seed_demo --catalogue-only`. Prints one JSON line: token, organization ids,
the hot organization. Organizations, subscriptions and accounts are bulk-created; each credit lot
goes through `credits_grant`, so the ledger is exactly what the service would have written.
"""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402

from accounts.models import Organization  # noqa: E402
from accounts.services import service_token_create  # noqa: E402
from billing.models import CreditAccount, LotCategory  # noqa: E402
from billing.services import credits_grant  # noqa: E402
from core.clock import now  # noqa: E402
from plans.models import Plan, Subscription  # noqa: E402

ORGS = int(os.environ.get("BENCH_ORGS", "1000"))
CREDITS = Decimal(os.environ.get("BENCH_ORG_CREDITS", "1000000"))  # 200,000 local tasks each
HOT_CREDITS = Decimal(os.environ.get("BENCH_HOT_CREDITS", "100000000"))
PLAN = os.environ.get("BENCH_PLAN", "plus")


def main() -> None:
    at = now()
    with connection.cursor() as cursor:  # seeding only: a thousand grants need no fsync each
        cursor.execute("SET synchronous_commit TO off")
    plan = Plan.objects.get(key=PLAN)
    with transaction.atomic():
        orgs = Organization.objects.bulk_create([Organization(name=f"bench-{i:04d}") for i in range(ORGS)])
        Subscription.objects.bulk_create([Subscription(organization=o, plan=plan, anchor=at) for o in orgs])
        CreditAccount.objects.bulk_create([CreditAccount(organization=o) for o in orgs])
    ids = [o.pk for o in orgs]
    hot = ids[0]
    for org_id in ids:
        credits_grant(
            organization_id=org_id,
            credits=HOT_CREDITS if org_id == hot else CREDITS,
            now=at,
            category=LotCategory.PAID,
            reason="bench",
            external_ref=f"bench:{org_id}",
        )
    _, token = service_token_create(name=f"bench-{at:%Y%m%d%H%M%S}", scope="usage")
    print(json.dumps({"token": token, "organizations": ids, "hot": hot}))


if __name__ == "__main__":
    main()
