"""Bench phase p (optional): server time of the dashboard's overview and usage pages at 10k and 1M events.

Seeds two organizations on the plus plan (owners `bench-pages-*@example.com`), one with 10,000 usage
events and one with 1,000,000, spread over the last 365 days, written with INSERT ... SELECT
generate_series (PostgreSQL only), and their DailyUsage rollup rows with one INSERT ... SELECT ...
GROUP BY (the same sums usage.rollups writes). Then renders each page in-process through Django's test
Client, logged in as the owner: BENCH_PAGES_WARMUP warm-up requests, then BENCH_PAGES_N measured ones
(default 30); the median is the page's server time (middleware, views, queries, templates; no network).

Run it against a freshly seeded bench database (`bench/runner.py` does, before gunicorn starts, when
BENCH_PHASES contains `p`): the rollup cursor is moved past the inserted events, which is only right
while no other events are waiting for the rollup (the script rolls those up first).

Prints a report, then one JSON line. Goal: each page under 100 ms at 1M events, and 1M / 10k < 1.5x.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402

from accounts.models import Organization, User  # noqa: E402
from billing.services.provision import subscription_change, user_signup  # noqa: E402
from core.clock import now  # noqa: E402
from plans.models import Meter  # noqa: E402
from usage.models import RollupCursor  # noqa: E402
from usage.rollups import CURSOR_NAME, daily_usage_rollup  # noqa: E402

SIZES = [int(s) for s in os.environ.get("BENCH_PAGES_SIZES", "10000,1000000").split(",")]
N = int(os.environ.get("BENCH_PAGES_N", "30"))
WARMUP = int(os.environ.get("BENCH_PAGES_WARMUP", "3"))
PLAN = os.environ.get("BENCH_PLAN", "plus")
HOST = os.environ.get("BENCH_PAGES_HOST", "127.0.0.1")  # must be in ALLOWED_HOSTS
TARGET_MS = 100.0
TARGET_RATIO = 1.5
METERS = ("codex.local_task", "codex.cloud_task")
DAYS = 365

# Every 50th event is denied (402, nothing used); of the allowed ones, one in four is paid with
# credits (the meter's credits per unit), the rest come from the plan's allowance.
INSERT_EVENTS = """
INSERT INTO usage_usageevent (
    organization_id, meter_id, kind, decision, quantity, from_allowance, credits_charged,
    idempotency_key, request_hash, http_status, response, metadata, user_id, occurred_at, created_at
)
SELECT
    %(org)s,
    CASE WHEN g %% 3 = 0 THEN %(meter_b)s ELSE %(meter_a)s END,
    'usage',
    CASE WHEN g %% 50 = 0 THEN 'denied' ELSE 'allowed' END,
    1,
    CASE WHEN g %% 50 = 0 OR g %% 4 = 0 THEN 0 ELSE 1 END,
    CASE WHEN g %% 50 <> 0 AND g %% 4 = 0
         THEN (CASE WHEN g %% 3 = 0 THEN %(credits_b)s ELSE %(credits_a)s END) ELSE 0 END,
    'bench-pages-' || g,
    substr(md5(g::text), 1, 32),
    CASE WHEN g %% 50 = 0 THEN 402 ELSE 200 END,
    CASE WHEN g %% 50 = 0
         THEN '{"allowed": false, "error": {"code": "limit_reached", "message": "Usage limit reached."}}'::jsonb
         ELSE jsonb_build_object('allowed', true, 'quantity', '1', 'windows', '[]'::jsonb, 'lots', '[]'::jsonb)
    END,
    '{}'::jsonb,
    NULL,
    ts,
    ts
FROM generate_series(1, %(n)s) AS g,
     LATERAL (SELECT %(end)s::timestamptz - (g * %(span)s::double precision / %(n)s) * interval '1 second' AS ts) AS t
"""

INSERT_ROLLUP = """
INSERT INTO usage_dailyusage (organization_id, meter_id, day, quantity, from_allowance, credits, events, denied)
SELECT e.organization_id, e.meter_id, (e.created_at AT TIME ZONE %(tz)s)::date,
       coalesce(sum(e.quantity) FILTER (WHERE e.decision = 'allowed'), 0),
       coalesce(sum(e.from_allowance) FILTER (WHERE e.decision = 'allowed'), 0),
       coalesce(sum(e.credits_charged) FILTER (WHERE e.decision = 'allowed'), 0),
       count(*) FILTER (WHERE e.decision = 'allowed'),
       count(*) FILTER (WHERE e.decision <> 'allowed')
FROM usage_usageevent e
WHERE e.organization_id = %(org)s
GROUP BY 1, 2, 3
"""


def seed(size: int, meters: list[Meter], stamp: str) -> tuple[User, Organization, float]:
    at = now()
    owner, org = user_signup(email=f"bench-pages-{size}-{stamp}@example.com", password=None, now=at)
    subscription_change(organization_id=org.pk, plan_key=PLAN, now=at)
    started = time.monotonic()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL synchronous_commit TO off")
        cursor.execute(
            INSERT_EVENTS,
            {
                "org": org.pk,
                "meter_a": meters[0].pk,
                "meter_b": meters[1].pk,
                "credits_a": meters[0].credits_per_unit,
                "credits_b": meters[1].credits_per_unit,
                "n": size,
                "end": at - timedelta(minutes=10),
                "span": DAYS * 86400,
            },
        )
        cursor.execute(INSERT_ROLLUP, {"org": org.pk, "tz": org.timezone})
    return owner, org, time.monotonic() - started


def cursor_past_inserted() -> None:
    """The inserted events are rolled up already: move the rollup's cursor past them."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM usage_usageevent")
        row = cursor.fetchone()
        top = row[0] if row else 0
        RollupCursor.objects.update_or_create(name=CURSOR_NAME, defaults={"last_event_id": top, "updated_at": now()})
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE usage_usageevent")
        cursor.execute("ANALYZE usage_dailyusage")


def time_page(client: Client, url: str) -> dict[str, Any]:
    for _ in range(WARMUP):
        response = client.get(url, HTTP_HOST=HOST)
        if response.status_code != 200:
            raise SystemExit(f"bench pages: GET {url} answered {response.status_code}")
    samples = []
    for _ in range(N):
        started = time.perf_counter()
        response = client.get(url, HTTP_HOST=HOST)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"bench pages: GET {url} answered {response.status_code}")
    samples.sort()
    return {"median_ms": statistics.median(samples), "p90_ms": samples[int(len(samples) * 0.9) - 1]}


def main() -> None:
    if connection.vendor != "postgresql":
        raise SystemExit("bench pages: PostgreSQL only")
    meters = list(Meter.objects.filter(key__in=METERS).order_by("key"))
    if len(meters) != 2:
        raise SystemExit(f"bench pages: needs the demo meters {METERS} (manage.py seed_demo --catalogue-only)")
    # Events written before this run go through the real rollup first, so moving the cursor skips none.
    daily_usage_rollup(now=now() + timedelta(days=1))
    stamp = f"{time.time_ns()}"
    orgs: list[tuple[int, User, Organization, float]] = []
    for size in SIZES:
        owner, org, took = seed(size, meters, stamp)
        orgs.append((size, owner, org, took))
    cursor_past_inserted()
    result: dict[str, Any] = {"sizes": {}}
    lines = [f"dashboard pages (in-process server time, median of {N} after {WARMUP} warm-up)"]
    for size, owner, org, took in orgs:
        client = Client()
        client.force_login(owner)
        timings = {
            "overview": time_page(client, reverse("org_overview", kwargs={"org_id": org.pk})),
            "usage": time_page(client, reverse("org_usage", kwargs={"org_id": org.pk})),
        }
        result["sizes"][str(size)] = {"organization": org.pk, "seed_s": round(took, 1), **timings}
        lines.append(
            f"  {size:>9,} events (seeded in {took:5.1f} s): overview {timings['overview']['median_ms']:6.1f} ms"
            f" (p90 {timings['overview']['p90_ms']:.1f}), usage {timings['usage']['median_ms']:6.1f} ms"
            f" (p90 {timings['usage']['p90_ms']:.1f})"
        )
    ok = True
    if len(SIZES) >= 2:
        small, big = result["sizes"][str(SIZES[0])], result["sizes"][str(SIZES[-1])]
        for page in ("overview", "usage"):
            ms_big = big[page]["median_ms"]
            ratio = ms_big / small[page]["median_ms"]
            passed = ms_big < TARGET_MS and ratio < TARGET_RATIO
            ok = ok and passed
            result[f"{page}_ratio"] = round(ratio, 2)
            lines.append(
                f"  {page:<8} {SIZES[-1]:,} / {SIZES[0]:,} events: {ms_big:.1f} ms, ratio {ratio:.2f}x"
                f" (targets < {TARGET_MS:.0f} ms, < {TARGET_RATIO}x)  ->  {'PASS' if passed else 'FAIL'}"
            )
    result["ok"] = ok
    print("\n".join(lines))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
