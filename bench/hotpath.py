"""In-process look at the hot paths: SQL per request, time per request, and a cProfile of N requests.

Usage (after `make bench` seeded the bench database, or with any seeded DATABASE_URL):
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/flexbench .venv/bin/python bench/hotpath.py [N] [phase ...]
BENCH_SERVER_SIDE_BINDING=1 runs it with OPTIONS={"server_side_binding": True} (psycopg binds parameters on the
server and prepares statements it has seen 5 times).
Phases: a (baseline), b (usage over many orgs), c (usage on one org), d (one 1,000-event batch), e (entitlements).
Prints, per phase: the SQL statements of one request, wall and CPU ms per request, and the top functions by own time and
by cumulative time (cProfile over N requests). Writes bench/results/profile-<phase>.txt.
"""

from __future__ import annotations

import cProfile
import functools
import importlib
import io
import json
import os
import pstats
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("BENCH_ENDPOINTS", "1")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1")
os.environ.setdefault("PYTHONWARNINGS", "ignore")
warnings.filterwarnings("ignore", message="No directory at")

import django  # noqa: E402

django.setup()

if os.environ.get("BENCH_SERVER_SIDE_BINDING") == "1":  # try psycopg server-side binding (prepared statements)
    from django.conf import settings

    settings.DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True

from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from accounts.models import Organization  # noqa: E402
from accounts.services import service_token_create  # noqa: E402

RESULTS = ROOT / "bench" / "results"
_counter = 0


def key() -> str:
    global _counter
    _counter += 1
    return f"prof-{os.getpid()}-{time.time_ns()}-{_counter}"


# Inclusive CPU time (time.process_time: waiting for PostgreSQL is not counted) of the pieces of a request.
SECTIONS = [
    ("rest_framework.views", "APIView", "dispatch", "DRF dispatch (view + auth + render)"),
    ("rest_framework.renderers", "JSONRenderer", "render", "DRF JSON render"),
    ("rest_framework.request", "Request", "_parse", "DRF JSON parse"),
    ("accounts.authentication", None, "principal_for_secret", "auth (cached)"),
    ("usage.apis", None, "parse_usage", "parse_usage"),
    ("usage.services.record", None, "usage_record_batch", "usage_record_batch (service, all of it)"),
    ("usage.services.engine", "Engine", "__init__", "Engine(): lock account + load subscription"),
    ("usage.services.engine", None, "credit_books_lock", "  credit_books_lock (SELECT .. FOR NO KEY UPDATE)"),
    ("usage.services.engine", "Engine", "preload", "Engine.preload (windows SELECT)"),
    ("usage.services.engine", "Engine", "evaluate", "Engine.evaluate (incl. lots SELECT)"),
    ("billing.services.book", "CreditBook", "lots", "  CreditBook.lots (lots SELECT)"),
    ("usage.services.engine", "Engine", "apply", "Engine.apply"),
    ("usage.services.record", None, "request_hash", "request_hash"),
    ("usage.services.record", None, "decision_fields", "decision_fields (response body)"),
    ("usage.services.record", None, "denial", "denial (402 body)"),
    ("usage.services.engine", "Engine", "flush_windows", "Engine.flush_windows (bulk_create/bulk_update)"),
    ("billing.services.book", "CreditBook", "flush", "CreditBook.flush (lots, ledger, account)"),
    ("usage.services.engine", "Engine", "flush", "Engine.flush (all writes after the event)"),
    ("django.db.models.query", "QuerySet", "bulk_create", "  ORM bulk_create (any)"),
    ("django.db.models.query", "QuerySet", "bulk_update", "  ORM bulk_update (any)"),
    ("django.db.models.query", "QuerySet", "update", "  ORM update (any)"),
    ("django.db.models.sql.compiler", "SQLCompiler", "as_sql", "  ORM SQL compilation (SELECT/UPDATE)"),
    ("django.db.models.sql.compiler", "SQLInsertCompiler", "as_sql", "  ORM SQL compilation (INSERT)"),
    ("django.db.backends.utils", "CursorWrapper", "execute", "  cursor.execute (psycopg: adapt, send; CPU only)"),
    ("usage.selectors", None, "entitlements", "entitlements selector"),
    ("billing.selectors", None, "lots_open", "  lots_open (2nd lots SELECT)"),
]


_originals: list[tuple[object, str, object]] = []


def _timed(original: Callable[..., Any], slot: list[float]) -> Callable[..., Any]:
    """`original`, adding its CPU time to slot[0] and its calls to slot[1] (outermost call only)."""
    depth = [0]

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if depth[0]:
            return original(*args, **kwargs)
        depth[0] += 1
        started = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            slot[0] += time.process_time() - started
            slot[1] += 1
            depth[0] -= 1

    return wrapper


def uninstrument() -> None:
    for owner, attr, original in reversed(_originals):
        setattr(owner, attr, original)
    _originals.clear()


def instrument() -> dict[str, list[float]]:

    totals: dict[str, list[float]] = {}
    _originals.clear()
    for module_name, cls_name, attr, label in SECTIONS:
        try:
            owner = importlib.import_module(module_name)
            if cls_name:
                owner = getattr(owner, cls_name)
            original = getattr(owner, attr)
        except (ImportError, AttributeError):
            continue
        wrapper = _timed(original, totals.setdefault(label, [0.0, 0]))
        _originals.append((owner, attr, owner.__dict__.get(attr, original)))
        setattr(owner, attr, staticmethod(wrapper) if isinstance(owner.__dict__.get(attr), staticmethod) else wrapper)
    return totals


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process on this machine; 0 if it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    args = sys.argv[1:]
    n = int(args.pop(0)) if args and args[0].isdigit() else 2000
    phases = args or ["a", "b", "c", "d", "e"]
    orgs = list(Organization.objects.filter(name__startswith="bench-").order_by("id").values_list("id", flat=True))
    if not orgs:
        raise SystemExit("no bench-* organizations: run bench/run (or bench/seed.py) first")
    hot = orgs[0]
    _, token = service_token_create(name=f"profile-{time.time_ns()}", scope="usage")
    client = APIClient(SERVER_NAME="127.0.0.1")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    def usage(org: int) -> None:
        body = {"organization": org, "meter": "codex.local_task", "quantity": "1"}
        r = client.post("/api/v1/usage", body, format="json", HTTP_IDEMPOTENCY_KEY=key())
        assert r.status_code in (201, 402), r.content

    def baseline() -> None:
        body = {"organization": random.choice(orgs), "meter": "codex.local_task", "quantity": "1"}
        r = client.post("/api/v1/bench/baseline", body, format="json", HTTP_IDEMPOTENCY_KEY=key())
        assert r.status_code == 201, r.content

    def batch() -> None:
        events = [
            {"organization": org, "meter": "codex.local_task", "quantity": "1", "idempotency_key": key()}
            for org in orgs[:1000]
        ]
        r = client.post("/api/v1/usage/batch", {"events": events}, format="json")
        assert r.status_code == 200, r.content

    def entitlements() -> None:
        r = client.get(f"/api/v1/organizations/{random.choice(orgs)}/entitlements")
        assert r.status_code == 200, r.content

    calls = {
        "a": ("baseline", baseline, n),
        "b": ("usage over many orgs", lambda: usage(random.choice(orgs)), n),
        "c": ("usage on one org", lambda: usage(hot), n),
        "d": ("batch of 1,000 events", batch, max(5, n // 200)),
        "e": ("entitlements", entitlements, n),
    }
    RESULTS.mkdir(exist_ok=True)
    for phase in phases:
        name, call, count = calls[phase]
        for _ in range(20 if phase != "d" else 1):  # warm caches (auth, catalogue, connection)
            call()
        with CaptureQueriesContext(connection) as ctx:
            call()
        queries = [q["sql"] for q in ctx.captured_queries]
        backend = _backend_pid()
        db_started = _proc_cpu(backend)
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(count):
            call()
        per = (time.perf_counter() - started) / count * 1000
        cpu = (time.process_time() - cpu_started) / count * 1000
        db_cpu = (_proc_cpu(backend) - db_started) / count * 1000
        totals = instrument()
        for slot in totals.values():
            slot[0], slot[1] = 0.0, 0
        cpu_started = time.process_time()
        for _ in range(count):
            call()
        cpu_all = (time.process_time() - cpu_started) / count * 1000
        section_lines = [
            f"  CPU by section, ms per request (inclusive; instrumented run: {cpu_all:.2f} ms CPU per request):"
        ]
        for label, (seconds, n_calls) in totals.items():
            if n_calls:
                section_lines.append(f"    {seconds / count * 1000:>8.3f}  {label}  ({n_calls / count:g} calls)")
        uninstrument()
        head_sections = "\n".join(section_lines)
        out = io.StringIO()
        # Two profiles: wall clock (includes waiting for PostgreSQL) and this process's CPU time.
        for label, timer in (("WALL CLOCK", time.perf_counter), ("CPU TIME", time.process_time)):
            profiler = cProfile.Profile(timer)
            profiler.enable()
            for _ in range(count):
                call()
            profiler.disable()
            out.write(f"\n######## {label} profile, {count} requests ########\n")
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(60)
        head = [
            f"== {phase} {name}: {len(queries)} SQL statements per request, {per:.2f} ms wall, "
            f"{cpu:.2f} ms CPU of this process + {db_cpu:.2f} ms CPU of its PostgreSQL backend per request "
            f"(in-process, {count} requests, no profiler)"
        ]
        head += [f"  {i + 1:>2}. {sql[:220]}" for i, sql in enumerate(queries)]
        head.append(head_sections)
        text = "\n".join(head) + "\n" + out.getvalue()
        (RESULTS / f"profile-{phase}.txt").write_text(text)
        print("\n".join(head), flush=True)
    print(json.dumps({"written": [str(RESULTS / f"profile-{p}.txt") for p in phases]}))


if __name__ == "__main__":
    main()
