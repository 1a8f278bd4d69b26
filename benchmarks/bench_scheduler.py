"""Scheduler benchmark: N active cron schedules firing every minute, served by W workers.

Prints the lag between each fire time and the creation of its run (p50 / p99 / max, from the
database's own timestamps), whether every fire created exactly one run, and the cost of one
scheduler tick that fires all N schedules (wall time and database commits).

    .venv/bin/python benchmarks/bench_scheduler.py --backend postgres --workers 3 --minutes 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from legato.scheduler import Scheduler  # noqa: E402
from legato.store import RunFilter, open_store  # noqa: E402

PG = os.environ.get("LEGATO_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1/test")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def database_url(backend: str) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{tempfile.mkdtemp()}/sched.db", None
    schema = f"bench_sched_{uuid.uuid4().hex[:8]}"
    return f"{PG}?schema={schema}", schema


def drop(schema: str | None) -> None:
    if schema:
        import psycopg

        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def commits(url: str) -> int | None:
    if not url.startswith("postgres"):
        return None
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else None


def one_tick_cost(backend: str, count: int) -> None:
    """Fire all schedules once, in-process, with a clock set just past a minute boundary."""
    url, schema = database_url(backend)
    env = {**os.environ, "LEGATO_DATABASE_URL": url, "BENCH_SCHEDULES": str(count)}
    subprocess.run(
        [sys.executable, "-c", "import benchmarks.scheduler_flows as m; m.app.register()"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    store = open_store(url)
    next_fire = store.list_schedules()[0]["next_fire_at"]
    scheduler = Scheduler(store, clock=lambda: next_fire + 5)
    before = commits(url)
    t0 = time.perf_counter()
    created = scheduler.tick()
    elapsed = time.perf_counter() - t0
    after = commits(url)
    n = len(store.list_runs(RunFilter(limit=count + 10)))
    print(
        f"[{backend}] one tick firing {count} schedules: {elapsed * 1000:.0f} ms, "
        f"{created} runs planned, {n} created"
        + (f", {after - before} commits" if before is not None and after is not None else "")
    )
    store.close()
    drop(schema)


def lag_with_workers(backend: str, count: int, workers: int, minutes: int) -> None:
    url, schema = database_url(backend)
    env = {
        **os.environ,
        "LEGATO_DATABASE_URL": url,
        "BENCH_SCHEDULES": str(count),
        "PYTHONPATH": str(ROOT),
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "legato.cli",
                "worker",
                "benchmarks/scheduler_flows.py",
                "--db",
                url,
                "--concurrency",
                "8",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        store = open_store(url)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if len(store.list_schedules()) == count:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        start = store.now_ms()
        first_boundary = (start // 60_000 + 1) * 60_000
        end = first_boundary + (minutes - 1) * 60_000
        print(
            f"[{backend}] {count} schedules, {workers} workers: waiting for {minutes} minute "
            "boundaries...",
            flush=True,
        )
        while store.now_ms() < end + 15_000:
            time.sleep(1)
        rows = store.list_runs(RunFilter(limit=count * (minutes + 2)))
        fired = [r for r in rows if first_boundary <= r["scheduled_for"] <= end]
        lags = [r["created_at"] - r["scheduled_for"] for r in fired]
        per_fire = Counter((r["schedule_id"], r["scheduled_for"]) for r in fired)
        expected = count * minutes
        print(
            f"[{backend}] runs for {minutes} boundaries: {len(fired)} (expected {expected}); "
            f"duplicates: {sum(1 for v in per_fire.values() if v > 1)}"
        )
        if lags:
            print(
                f"[{backend}] fire→run lag: p50 {statistics.median(lags):.0f} ms, "
                f"p99 {percentile(lags, 0.99):.0f} ms, max {max(lags)} ms (target p99 ≤ 1000 ms)"
            )
        store.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        drop(schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="postgres")
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--minutes", type=int, default=2)
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        one_tick_cost(backend, args.schedules)
        lag_with_workers(backend, args.schedules, args.workers, args.minutes)


if __name__ == "__main__":
    main()
