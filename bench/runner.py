"""`make bench`: gunicorn on PostgreSQL, driven by wrk over loopback, one run, one table.

Phases (BENCH_DURATION measured seconds each, after a short warm-up; a, b and c in BENCH_ROUNDS interleaved rounds):
  a  baseline       POST /api/v1/bench/baseline: same auth, headers and body, inserts one row
  b  usage spread   POST /api/v1/usage over 1,000 organizations
  c  usage hot      POST /api/v1/usage on one organization
  d  batch          POST /api/v1/usage/batch, 1,000 events per request (reported in events/s)
  e  entitlements   GET /api/v1/organizations/{id}/entitlements over 1,000 organizations
  p  pages          optional (BENCH_PHASES=a,b,c,d,e,p): overview and usage pages in-process at 10k and 1M
                    events (bench/pages.py; runs before gunicorn starts; goal < 100 ms and 1M/10k < 1.5x)
Then `manage.py audit_ledger`. The table goes to stdout and bench/results/latest.txt.

Knobs (environment): BENCH_DATABASE_URL (its database name must contain "bench"; it is dropped and
created again), BENCH_TEMPLATE_DB (copy this migrated database instead of migrating from zero;
default flexdev), BENCH_DURATION, BENCH_WARMUP, BENCH_WORKERS, BENCH_WORKER_CLASS (sync|gthread),
BENCH_THREADS_PER_WORKER, BENCH_CONNECTIONS, BENCH_BATCH_CONNECTIONS, BENCH_BATCH_ORGS, BENCH_PHASES (e.g. "a,b"),
BENCH_ROUNDS (default 6; 1: each phase in one stretch), BENCH_REUSE_DB=1 (skip drop/create/seed; for tuning
only), BENCH_VACUUM_SECONDS (the autovacuum stand-in's
period when the server's autovacuum is off; 0: none).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
CORES = os.cpu_count() or 1


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


DATABASE_URL = env("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flexbench")
TEMPLATE_DB = env("BENCH_TEMPLATE_DB", "flexdev")
DURATION = int(env("BENCH_DURATION", "12"))
WARMUP = int(env("BENCH_WARMUP", "2"))
# The phases whose targets are ratios run in rounds (a b c, a b c, ...), DURATION / ROUNDS seconds
# each (a warm-up before the first, a second before the others), and each phase's figures pool its
# rounds; then d and e, each in one stretch. The speed of these machines swings: the baseline served
# 1,300, 730 and 1,270 req/s in three 4-second rounds 6 s apart, and b measured in one stretch against a
# baseline measured a minute earlier gave b / a from 0.61 to 1.27 for the same code (nine runs).
# Interleaved finely, the phases share the swings. The batch phase goes after them: the checkpoints
# its WAL sets off make the next first write of every page a full-page image, and would fall on
# whichever phase came next.
ROUNDS = max(1, int(env("BENCH_ROUNDS", "6")))
ROUNDED = ("a", "b", "c")
WORKERS = int(env("BENCH_WORKERS", str(2 * CORES)))
WORKER_CLASS = env("BENCH_WORKER_CLASS", "gthread")
THREADS_PER_WORKER = int(env("BENCH_THREADS_PER_WORKER", "2"))
WRK_THREADS = int(env("BENCH_WRK_THREADS", str(max(1, min(CORES, 4)))))
CONNECTIONS = int(env("BENCH_CONNECTIONS", str(WORKERS * THREADS_PER_WORKER)))
BATCH_CONNECTIONS = int(env("BENCH_BATCH_CONNECTIONS", str(CORES)))
PHASES = [p.strip() for p in env("BENCH_PHASES", "a,b,c,d,e").split(",") if p.strip()]

TARGET_B = 0.7  # (b) >= 0.7 x (a)
TARGET_C = 0.6  # (c) >= 0.6 x (b)
TARGET_D = 10_000  # events/s


@dataclass
class Phase:
    key: str
    name: str
    script: str
    events_per_request: int = 1
    connections: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    phase: Phase
    data: dict[str, float]

    @property
    def rate(self) -> float:
        return self.data["requests"] / (self.data["duration_us"] / 1e6) * self.phase.events_per_request


def pooled(parts: list[dict[str, float]]) -> dict[str, float]:
    """One phase's rounds as one measurement: counts and time add up, CPU per request is weighted by
    requests, p50 is the median of the rounds' and p90, p99 and max are the worst round's."""
    out = {k: sum(p[k] for p in parts) for k in parts[0] if not k.endswith(("_us", "_ms"))}
    out["duration_us"] = sum(p["duration_us"] for p in parts)
    weights = [max(p["requests"], 1) for p in parts]
    for k in ("mean_us", "app_cpu_ms", "db_cpu_ms"):
        out[k] = sum(p[k] * w for p, w in zip(parts, weights, strict=True)) / sum(weights)
    out["p50_us"] = sorted(p["p50_us"] for p in parts)[len(parts) // 2]
    for k in ("p90_us", "p99_us", "max_us"):
        out[k] = max(p[k] for p in parts)
    return out


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    cmd: list[str],
    *,
    env_extra: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env_extra or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"bench: {' '.join(cmd[:3])} ... failed with exit code {proc.returncode}")
    return proc


# Setup ------------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0:
        raise SystemExit("bench: wrk is not installed (apt-get install -y wrk)")
    log("installing wrk (apt-get install -y wrk)")
    proc = run(["apt-get", "install", "-y", "wrk"], check=False, timeout=300)
    if proc.returncode != 0:
        run(["apt-get", "update"], timeout=300)
        run(["apt-get", "install", "-y", "wrk"], timeout=300)
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("bench: wrk could not be installed")
    return path


def app_env(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "BENCH_ENDPOINTS": "1",
        "CONN_MAX_AGE": "600",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-secret-key-" + "x" * 40),
        "LOG_LEVEL": "WARNING",
        "PYTHONWARNINGS": "ignore::UserWarning",  # whitenoise: no collected static files (none are served here)
    }


def prepare_database() -> None:
    """Drop and create the bench database (a copy of the template when possible), then migrate."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(DATABASE_URL)
    name = parts.path.lstrip("/")
    if "bench" not in name:
        raise SystemExit(f"bench: refusing to drop {name!r}: the bench database name must contain 'bench'")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    started = time.monotonic()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        copied = False
        if TEMPLATE_DB:
            try:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE_DB))
                )
                copied = True
            except psycopg.Error as exc:
                log(f"cannot copy {TEMPLATE_DB} ({str(exc).strip().splitlines()[0]}); migrating from zero (~100 s)")
        if not copied:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    run([PYTHON, "manage.py", "migrate", "--noinput"], env_extra=app_env(DATABASE_URL), timeout=600)
    log(
        f"database {name} ready ({'copy of ' + TEMPLATE_DB if copied else 'migrated'}) "
        f"in {time.monotonic() - started:.1f} s"
    )


def seed() -> dict[str, Any]:
    started = time.monotonic()
    run([PYTHON, "manage.py", "seed_demo", "--catalogue-only"], env_extra=app_env(DATABASE_URL))
    proc = run([PYTHON, str(BENCH_DIR / "seed.py")], env_extra=app_env(DATABASE_URL))
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    analyze()
    log(
        f"seeded {len(data['organizations'])} organizations on plus (hot: {data['hot']}) "
        f"in {time.monotonic() - started:.1f} s"
    )
    return data


def analyze() -> None:
    """VACUUM ANALYZE the seeded database, as autovacuum would have long since done on a live one:
    without statistics the planner guesses at the hot path's joins, and autovacuum would otherwise
    wake up in the middle of a phase."""
    import psycopg

    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


# The rows every usage request updates in place. A live server's autovacuum keeps them from piling
# up dead versions; this machine's PostgreSQL runs with autovacuum off, so the bench does that work.
VACUUM_TABLES = ("billing_creditaccount", "billing_creditlot", "usage_allowancewindow")
VACUUM_SECONDS = float(env("BENCH_VACUUM_SECONDS", "10"))


class Vacuumer(threading.Thread):
    """Autovacuum's stand-in while the phases run (only when the server's autovacuum is off): VACUUM
    the hot tables every VACUUM_SECONDS. Its backend is one of the bench database's, so its CPU counts
    in the phases' db CPU, as autovacuum's would not."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stopping = threading.Event()
        self.runs = 0

    @staticmethod
    def needed() -> bool:
        import psycopg

        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            row = conn.execute("SHOW autovacuum").fetchone()
        return row is not None and row[0] == "off"

    def run(self) -> None:
        import psycopg

        with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
            while not self.stopping.wait(VACUUM_SECONDS):
                conn.execute(f"VACUUM {', '.join(VACUUM_TABLES)}")
                self.runs += 1


def pages() -> tuple[str, bool]:
    """Phase p: bench/pages.py seeds 10k and 1M events and times the dashboard pages in-process."""
    started = time.monotonic()
    proc = run([PYTHON, str(BENCH_DIR / "pages.py")], env_extra=app_env(DATABASE_URL), timeout=900)
    lines = proc.stdout.strip().splitlines()
    data = json.loads(lines[-1])
    (RESULTS / "pages.json").write_text(json.dumps(data))
    log(f"p pages: done in {time.monotonic() - started:.1f} s")
    return "\n".join(lines[:-1]) + "\n", bool(data["ok"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gunicorn(port: int) -> subprocess.Popen[bytes]:
    cmd = [
        str(VENV_BIN / "gunicorn"),
        "config.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(WORKERS),
        "--worker-class",
        WORKER_CLASS,
        "--threads",
        str(THREADS_PER_WORKER),
        "--keep-alive",
        "30",
        "--backlog",
        "2048",
        "--timeout",
        "60",
        "--no-control-socket",
        "--error-logfile",
        str(RESULTS / "gunicorn.log"),
    ]
    log(
        f"gunicorn: {WORKERS} workers, {WORKER_CLASS}"
        + (f" x {THREADS_PER_WORKER} threads" if WORKER_CLASS == "gthread" else "")
        + f", 127.0.0.1:{port}"
    )
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **app_env(DATABASE_URL)}, start_new_session=True)


def wait_ready(port: int, token: str, org: int, proc: subprocess.Popen[bytes]) -> None:
    url = f"http://127.0.0.1:{port}/api/v1/organizations/{org}/entitlements"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: gunicorn exited with {proc.returncode}; see {RESULTS / 'gunicorn.log'}")
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise SystemExit("bench: gunicorn did not answer within 60 s")


TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


def _db_backends() -> list[int]:
    import psycopg

    name = urlsplit(DATABASE_URL).path.lstrip("/")
    with psycopg.connect(DATABASE_URL.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name]
        ).fetchall()
    return [int(r[0]) for r in rows]


def cpu_sample(server_pid: int) -> tuple[float, float]:
    """CPU seconds used so far by the gunicorn workers and by the bench database's backends.

    Per request, these do not depend much on what else runs on the machine, unlike req/s."""
    app = sum(_cpu_seconds(pid) for pid in _children(server_pid))
    db = sum(_cpu_seconds(pid) for pid in _db_backends())
    return app, db


def drain(port: int, token: str, org: int) -> float:
    """Wait until requests left in flight by the last phase are done (wrk does not wait for them):
    send one probe per worker thread at once, until a round answers within a second."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"http://127.0.0.1:{port}/api/v1/organizations/{org}/entitlements"

    def probe(_: int) -> None:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=120) as response:
            response.read()

    started = time.monotonic()
    slots = WORKERS * THREADS_PER_WORKER
    with ThreadPoolExecutor(max_workers=slots) as pool:
        while time.monotonic() - started < 180:
            round_started = time.monotonic()
            list(pool.map(probe, range(slots)))
            if time.monotonic() - round_started < 1.0:
                break
    return time.monotonic() - started


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# Load -------------------------------------------------------------------------------------------


def wrk(
    wrk_path: str, phase: Phase, *, port: int, seconds: int, base_env: dict[str, str], label: str
) -> dict[str, float]:
    connections = phase.connections or CONNECTIONS
    threads = min(WRK_THREADS, connections)
    cmd = [
        wrk_path,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(BENCH_DIR / phase.script),
        f"http://127.0.0.1:{port}",
    ]
    proc = run(
        cmd,
        env_extra={**base_env, **phase.extra_env, "BENCH_RUN": f"{label}{int(time.time())}"},
        timeout=seconds + 60,
        cwd=BENCH_DIR,
    )
    (RESULTS / f"wrk-{phase.key}-{label}.txt").write_text(proc.stdout + proc.stderr)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.removeprefix("BENCH_RESULT "))
    raise SystemExit(f"bench: wrk printed no result for phase {phase.key}:\n{proc.stdout}{proc.stderr}")


def audit() -> tuple[str, str]:
    if not (ROOT / "usage" / "management" / "commands" / "audit_ledger.py").exists() and not any(
        ROOT.glob("*/management/commands/audit_ledger.py")
    ):
        return "MISSING", "manage.py audit_ledger does not exist yet"
    proc = run([PYTHON, "manage.py", "audit_ledger"], env_extra=app_env(DATABASE_URL), timeout=300, check=False)
    output = (proc.stdout + proc.stderr).strip()
    return ("PASS" if proc.returncode == 0 else f"FAIL (exit {proc.returncode})"), output


def db_counts() -> dict[str, int]:
    import psycopg

    with psycopg.connect(DATABASE_URL.replace("postgres://", "postgresql://", 1)) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM core_benchmarkrow),"
            " (SELECT count(*) FROM usage_usageevent WHERE decision = 'allowed'),"
            " (SELECT count(*) FROM usage_usageevent WHERE decision = 'denied')"
        ).fetchone()
    assert row is not None
    return {"baseline_rows": row[0], "events_allowed": row[1], "events_denied": row[2]}


# Report -----------------------------------------------------------------------------------------


def ms(us: float) -> str:
    return f"{us / 1000:.1f}"


def report(
    results: dict[str, Result],
    audit_status: str,
    audit_output: str,
    totals: dict[str, int],
    counts: dict[str, int],
    pages_text: str = "",
    pages_ok: bool = True,
) -> tuple[str, bool]:
    a = results.get("a")
    base = a.rate if a else 0.0
    lines = [
        f"make bench  {time.strftime('%Y-%m-%d %H:%M:%S')}  {CORES} cores  gunicorn {WORKERS} x {WORKER_CLASS}"
        + (f" ({THREADS_PER_WORKER} threads)" if WORKER_CLASS == "gthread" else "")
        + f"  wrk {WRK_THREADS} threads, {CONNECTIONS} connections ({BATCH_CONNECTIONS} for batch)  "
        f"{DURATION} s per phase"
        + (f" (a, b, c in {ROUNDS} interleaved rounds)" if ROUNDS > 1 else "")
        + f", each after a {WARMUP} s warm-up",
        "",
        f"{'phase':<26} {'rate':>12} {'unit':<6} {'p50 ms':>8} {'p99 ms':>8} {'x (a)':>7} {'2xx':>8} {'402':>7} "
        f"{'other4xx':>8} {'5xx':>5} {'errors':>6} {'app CPU':>8} {'db CPU':>7}  target",
    ]
    all_ok = True
    total_5xx = 0
    for key, res in results.items():
        d = res.data
        unit = "ev/s" if res.phase.events_per_request > 1 else "req/s"
        ratio = res.rate / base if base else 0.0
        errors = int(d["connect_errors"] + d["read_errors"] + d["write_errors"] + d["timeouts"])
        n5xx = int(d["n5xx"])
        total_5xx += n5xx
        target = ""
        if key == "b":
            ok = res.rate >= TARGET_B * base
            target = f"{'PASS' if ok else 'FAIL'} (b >= {TARGET_B} x a = {TARGET_B * base:.0f})"
        elif key == "c" and "b" in results:
            ok = res.rate >= TARGET_C * results["b"].rate
            target = f"{'PASS' if ok else 'FAIL'} (c >= {TARGET_C} x b = {TARGET_C * results['b'].rate:.0f})"
        elif key == "d":
            ok = res.rate >= TARGET_D
            target = f"{'PASS' if ok else 'FAIL'} (d >= {TARGET_D:,} ev/s)"
        else:
            ok = True
        if n5xx or errors:
            ok = False
            target += f" FAIL ({n5xx} 5xx, {errors} socket errors)"
        all_ok &= ok
        n2xx, n402 = (d["ev2xx"], d["ev402"]) if res.phase.events_per_request > 1 else (d["n2xx"], d["n402"])
        other4xx = d["evother"] if res.phase.events_per_request > 1 else d["n4xx"]
        lines.append(
            f"{key + ' ' + res.phase.name:<26} {res.rate:>12,.0f} {unit:<6} {ms(d['p50_us']):>8} {ms(d['p99_us']):>8} "
            f"{ratio:>7.2f} {int(n2xx):>8} {int(n402):>7} {int(other4xx):>8} {n5xx:>5} {errors:>6} "
            f"{d['app_cpu_ms']:>8.2f} {d['db_cpu_ms']:>7.2f}  {target}".rstrip()
        )
    lines.append("")
    lines.append(f"5xx over all phases: {total_5xx}  ->  {'PASS' if total_5xx == 0 else 'FAIL'}")
    audit_ok = audit_status == "PASS"
    all_ok &= audit_ok and total_5xx == 0
    lines.append(f"audit_ledger: {audit_status}")
    if audit_output:
        lines.extend("  " + line for line in audit_output.splitlines()[-15:])
    allowed_sent = totals.get("usage_2xx", 0)
    lines.append(
        f"check: usage 2xx answers (warm-ups included) {allowed_sent}, new allowed events in the database "
        f"{counts['events_allowed']}; 402 answers {totals.get('usage_402', 0)}, "
        f"new denied events {counts['events_denied']}; baseline 2xx {totals.get('baseline_2xx', 0)}, "
        f"new rows {counts['baseline_rows']} (the database may hold more: wrk does not count requests still in "
        "flight when a phase ends)"
    )
    lines.append(
        "app CPU / db CPU: milliseconds of CPU per request used by the gunicorn workers / by the bench "
        "database's PostgreSQL backends during the phase (per batch request for (d))."
    )
    lines.append(
        "(b)/(c): 1 x codex.local_task per request on plus (45 per 5 h included, then 5 credits); "
        "(d): batch rate counts events; p50/p99 of (d) are per batch request."
    )
    if pages_text:
        lines.extend(pages_text.rstrip("\n").splitlines())
        all_ok &= pages_ok
    lines.append(f"overall: {'PASS' if all_ok else 'FAIL'}")
    return "\n".join(lines) + "\n", all_ok


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    for old in RESULTS.glob("wrk-*.txt"):
        old.unlink()
    started = time.monotonic()
    load_before = os.getloadavg()
    wrk_path = ensure_wrk()
    seed_file = RESULTS / "seed.json"
    if env("BENCH_REUSE_DB", "0") == "1" and seed_file.exists():
        log("BENCH_REUSE_DB=1: reusing the bench database and its seed (numbers are not comparable to a fresh run)")
        run([PYTHON, "manage.py", "migrate", "--noinput"], env_extra=app_env(DATABASE_URL), timeout=600)
        data = json.loads(seed_file.read_text())
    else:
        prepare_database()
        data = seed()
        seed_file.write_text(json.dumps(data))
    orgs: list[int] = data["organizations"]
    token = str(data["token"])
    base_env = {
        "BENCH_TOKEN": token,
        "BENCH_ORGS": ",".join(map(str, orgs)),
        "BENCH_HOT": str(data["hot"]),
        "BENCH_DIR": str(BENCH_DIR),
    }
    phases = {
        "a": Phase("a", "baseline (1 insert)", "baseline.lua"),
        "b": Phase("b", "usage, 1,000 orgs", "usage_spread.lua"),
        "c": Phase("c", "usage, 1 hot org", "usage_hot.lua"),
        "d": Phase(
            "d",
            "batch x 1,000",
            "batch.lua",
            events_per_request=int(env("BENCH_BATCH_SIZE", "1000")),
            connections=BATCH_CONNECTIONS,
        ),
        "e": Phase("e", "entitlements GET", "entitlements.lua"),
    }
    pages_text, pages_ok = pages() if "p" in PHASES else ("", True)
    counts_before = db_counts()
    port = free_port()
    server = start_gunicorn(port)
    results: dict[str, Result] = {}
    totals: dict[str, int] = {}
    vacuumer = Vacuumer() if VACUUM_SECONDS > 0 and Vacuumer.needed() else None
    try:
        wait_ready(port, token, orgs[0], server)
        if vacuumer is not None:
            tables = ", ".join(VACUUM_TABLES)
            log(f"autovacuum is off on this server: the bench vacuums {tables} every {VACUUM_SECONDS:g} s")
            vacuumer.start()
        measured: dict[str, list[dict[str, float]]] = {}
        slice_seconds = max(1, round(DURATION / ROUNDS))
        schedule = [(r, k, slice_seconds) for r in range(ROUNDS) for k in PHASES if k in ROUNDED]
        schedule += [(0, k, DURATION) for k in PHASES if k not in ROUNDED and k != "p"]  # p: done above
        for round_no, key, measure in schedule:
            phase = phases[key]
            warmup = WARMUP if round_no == 0 else min(WARMUP, 1)
            runs = [("warmup", warmup), ("run", measure)] if warmup > 0 else [("run", measure)]
            for label, seconds in runs:
                cpu_before = cpu_sample(server.pid)
                out = wrk(
                    wrk_path, phase, port=port, seconds=seconds, base_env=base_env, label=f"{label}{round_no + 1}"
                )
                cpu_after = cpu_sample(server.pid)
                done = max(out["requests"], 1)
                out["app_cpu_ms"] = (cpu_after[0] - cpu_before[0]) / done * 1000
                out["db_cpu_ms"] = (cpu_after[1] - cpu_before[1]) / done * 1000
                waited = drain(port, token, orgs[-1])
                if waited > 2:
                    log(f"{key} {label}: waited {waited:.1f} s for requests still in flight")
                if key in ("b", "c"):
                    totals["usage_2xx"] = totals.get("usage_2xx", 0) + int(out["n2xx"])
                    totals["usage_402"] = totals.get("usage_402", 0) + int(out["n402"])
                elif key == "d":
                    totals["usage_2xx"] = totals.get("usage_2xx", 0) + int(out["ev2xx"])
                    totals["usage_402"] = totals.get("usage_402", 0) + int(out["ev402"])
                elif key == "a":
                    totals["baseline_2xx"] = totals.get("baseline_2xx", 0) + int(out["n2xx"])
                if label == "run":
                    measured.setdefault(key, []).append(out)
                    results[key] = Result(phase, pooled(measured[key]))
                    log(
                        f"{key} {phase.name}"
                        + (f" (round {round_no + 1} of {ROUNDS})" if ROUNDS > 1 and key in ROUNDED else "")
                        + f": {Result(phase, out).rate:,.0f} "
                        f"{'events/s' if phase.events_per_request > 1 else 'req/s'}, p50 {ms(out['p50_us'])} ms, "
                        f"p99 {ms(out['p99_us'])} ms, 5xx {int(out['n5xx'])}"
                    )
    finally:
        if vacuumer is not None:
            vacuumer.stopping.set()
        stop(server)
    log("running audit_ledger")
    audit_status, audit_output = audit()
    counts_after = db_counts()
    counts = {k: counts_after[k] - counts_before[k] for k in counts_after}
    text, ok = report(results, audit_status, audit_output, totals, counts, pages_text, pages_ok)
    load_after = os.getloadavg()
    text += (
        f"machine load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} on {CORES} cores "
        "(anything else running skews every number)\n"
    )
    text += f"total time {time.monotonic() - started:.0f} s\n"
    (RESULTS / "latest.txt").write_text(text)
    print()
    print(text, end="")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
