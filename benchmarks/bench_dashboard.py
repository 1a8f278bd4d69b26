"""Server-side render time of every dashboard page with a large history.

A fresh database (a SQLite file, or a PostgreSQL schema dropped afterwards) is filled in bulk
with ``--runs`` runs (default 100,000) of 10 flows spread over ``--days`` days (most
succeeded, some failed with a traceback, some cancelled; a few running and queued), their
steps, a run with 20 steps and 2,000 log lines, schedules and live workers. Then each page is
rendered ``--samples`` times through the ASGI application in-process (routing, the service
layer's queries, the templates; no network), after a warm-up, and p50 / p95 are printed.
Target: p95 ≤ 100 ms per page on PostgreSQL.

    .venv/bin/python benchmarks/bench_dashboard.py --backend both
    .venv/bin/python benchmarks/bench_dashboard.py --backend postgres --runs 100000 --samples 50

PostgreSQL is reached at ``$LEGATO_BENCH_PG`` (default ``postgresql://postgres@127.0.0.1/test``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from legato import App, cron, every
from legato.api import create_app
from legato.store import Store, open_store
from legato.store import queries as q

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

FLOWS = [f"flow_{i:02d}" for i in range(10)]
PG_URL = os.environ.get("LEGATO_BENCH_PG", "postgresql://postgres@127.0.0.1/test")

INSERT_RUN = """
INSERT INTO runs (id, flow, status, params, result, error, traceback, failed_step, attempts,
                  max_attempts, queue, priority, trigger, worker_id, created_at, scheduled_for,
                  started_at, finished_at)
VALUES (:id, :flow, :status, :params, :result, :error, :traceback, :failed_step, :attempts,
        :max_attempts, :queue, 0, :trigger, :worker_id, :created_at, :scheduled_for,
        :started_at, :finished_at)
"""
INSERT_STEP = """
INSERT INTO steps (run_id, position, name, status, attempts, run_attempt, started_at,
                   finished_at, result, error, traceback)
VALUES (:run_id, :position, :name, :status, :attempts, 1, :started_at, :finished_at, :result,
        :error, :traceback)
"""
INSERT_LOG = """
INSERT INTO logs (run_id, ts, level, step, attempt, message)
VALUES (:run_id, :ts, :level, :step, 1, :message)
"""
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/flows.py", line 88, in validate_invoices\n'
    "    total += parse_amount(line.split(';')[1], number)\n"
    '  File "/srv/app/flows.py", line 71, in parse_amount\n'
    '    raise ValueError(f"bad row {line}: amount {raw!r} is not a number")\n'
    "ValueError: bad row 17: amount 'abc' is not a number\n"
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_app(url: str) -> App:
    app = App(url)
    for i, name in enumerate(FLOWS):

        def body(day: str = "today", limit: int = 100) -> int:
            return limit

        body.__name__ = body.__qualname__ = name
        schedule: Any = None
        if i == 0:
            schedule = cron("0 22 L * *", timezone="Europe/Paris")
        elif i == 1:
            schedule = every(minutes=15)
        elif i == 2:
            schedule = cron("0 2 * * *")
        app.flow(name=name, description=f"Benchmark flow {i}", schedule=schedule)(body)
    return app


def _run_id(created: int, rng: random.Random) -> str:
    return f"{created:012x}{rng.getrandbits(80):020x}"


def seed(store: Store, runs: int, days: int, rng: random.Random) -> dict[str, str]:
    """Insert the history in bulk; returns ids of interesting runs."""
    now = store.now_ms()
    span = days * 86_400_000
    insert_run = q.render(INSERT_RUN, store.dialect)
    insert_step = q.render(INSERT_STEP, store.dialect)
    insert_log = q.render(INSERT_LOG, store.dialect)
    picked: dict[str, str] = {}
    batch: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    started = time.perf_counter()
    for n in range(runs):
        created = now - int(span * (rng.random() ** 1.5))  # denser towards now
        flow = FLOWS[n % len(FLOWS)]
        roll = rng.random()
        status = "succeeded" if roll < 0.9 else "failed" if roll < 0.97 else "cancelled"
        if n >= runs - 40:
            status = "running" if n % 2 else "queued"
        duration = int(rng.lognormvariate(7, 1.2))
        start = created + rng.randint(1, 500) if status != "queued" else None
        finish = start + duration if start is not None and status not in ("running",) else None
        if status == "queued":
            finish = None
        run_id = _run_id(created, rng)
        failed = status == "failed"
        batch.append(
            {
                "id": run_id,
                "flow": flow,
                "status": status,
                "params": json.dumps({"day": "2026-11-24", "limit": n % 500}),
                "result": json.dumps(n % 500) if status == "succeeded" else None,
                "error": "ValueError: bad row 17: amount 'abc' is not a number" if failed else None,
                "traceback": TRACEBACK if failed else None,
                "failed_step": "validate" if failed else None,
                "attempts": 3 if failed else (0 if status == "queued" else 1),
                "max_attempts": 3,
                "queue": "default" if n % 3 else "reports",
                "trigger": "schedule" if n % 4 == 0 else "manual",
                "worker_id": "bench-host:1:abc" if start is not None else None,
                "created_at": created,
                "scheduled_for": created,
                "started_at": start,
                "finished_at": finish,
            }
        )
        if start is not None and n % 10 == 0:  # steps for one run in ten
            for position, name in enumerate(("extract", "validate", "load")):
                bad = failed and name == "validate"
                steps.append(
                    {
                        "run_id": run_id,
                        "position": position,
                        "name": name,
                        "status": "failed" if bad else "succeeded",
                        "attempts": 3 if bad else 1,
                        "started_at": start + position * duration // 3,
                        "finished_at": start + (position + 1) * duration // 3,
                        "result": None if bad else "1",
                        "error": "ValueError: bad row 17" if bad else None,
                        "traceback": TRACEBACK if bad else None,
                    }
                )
                if bad:
                    break
            picked.setdefault(f"{status}_with_steps", run_id)
        picked.setdefault(status, run_id)
        if len(batch) >= 5000:
            with store._transaction() as tx:
                tx.write_many(insert_run, batch)
                if steps:
                    tx.write_many(insert_step, steps)
            batch, steps = [], []
            log(f"  {n + 1:,} runs inserted ({time.perf_counter() - started:.0f} s)")
    with store._transaction() as tx:
        if batch:
            tx.write_many(insert_run, batch)
        if steps:
            tx.write_many(insert_step, steps)
    # One big run: 20 steps and 2,000 log lines.
    big = picked["succeeded_with_steps"]
    rows = store.get_run(big)
    assert rows is not None
    t0 = rows["started_at"]
    with store._transaction() as tx:
        tx.write_many(
            insert_step,
            [
                {
                    "run_id": big,
                    "position": p,
                    "name": f"step_{p:02d}",
                    "status": "succeeded",
                    "attempts": 1,
                    "started_at": t0 + p * 50,
                    "finished_at": t0 + p * 50 + 45,
                    "result": "1",
                    "error": None,
                    "traceback": None,
                }
                for p in range(3, 20)
            ],
        )
        tx.write_many(
            insert_log,
            [
                {
                    "run_id": big,
                    "ts": t0 + i,
                    "level": "WARNING" if i % 50 == 0 else "INFO",
                    "step": f"step_{i % 20:02d}",
                    "message": f"processed batch {i} of 2000: {rng.randint(1, 10**6)} rows",
                }
                for i in range(2000)
            ],
        )
    picked["big"] = big
    for w in range(4):
        store.register_worker(
            f"bench-host:{w}:abc", "bench-host", 1000 + w, ["default", "reports"], 8
        )
    log(f"  seeded {runs:,} runs in {time.perf_counter() - started:.0f} s")
    return picked


def pages(ids: dict[str, str]) -> list[tuple[str, str]]:
    return [
        ("overview", "/"),
        ("overview (live part)", "/overview/live"),
        ("flows", "/flows"),
        ("flow", f"/flows/{FLOWS[0]}"),
        ("runs", "/runs"),
        ("runs, failed", "/runs?status=failed"),
        ("runs, flow + 1 day", f"/runs?flow={FLOWS[3]}&since=1d"),
        ("runs (live table)", "/runs?fragment=table"),
        ("run, 20 steps + 2,000 logs", f"/runs/{ids['big']}"),
        ("run, failed", f"/runs/{ids.get('failed_with_steps', ids['failed'])}"),
        ("run (live part)", f"/runs/{ids['running']}/live?after=0"),
        ("schedule, month", "/schedule?view=month"),
        ("schedule, week", "/schedule?view=week"),
        ("workers & queues", "/workers"),
    ]


def measure(client: TestClient, path: str, samples: int) -> tuple[float, float]:
    for _ in range(3):
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        client.get(path)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * len(times)) - 1)]
    return statistics.median(times), p95


@contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    import psycopg

    schema = f"bench_dash_{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}schema={schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def bench(backend: str, runs: int, days: int, samples: int) -> list[tuple[str, float, float]]:
    with database(backend) as url:
        log(f"{backend}: seeding {runs:,} runs over {days} days")
        store = open_store(url)
        app = build_app(url)
        app.use_store(store)
        app.register()
        ids = seed(store, runs, days, random.Random(7))
        if backend == "postgres":
            store._write("ANALYZE")
        results = []
        with TestClient(create_app(store)) as client:
            for name, path in pages(ids):
                p50, p95 = measure(client, path, samples)
                results.append((name, p50, p95))
                log(f"  {name:<28} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
        store.close()
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for backend in backends:
        for name, p50, p95 in bench(backend, args.runs, args.days, args.samples):
            table.setdefault(name, {})[backend] = (p50, p95)
    print(
        f"\nDashboard server-side render time, {args.runs:,} runs over {args.days} days, "
        f"{args.samples} samples per page (ms)\n"
    )
    header = "| page | " + " | ".join(f"{b} p50 | {b} p95" for b in backends) + " |"
    print(header)
    print("|---|" + "---:|" * (2 * len(backends)))
    worst = 0.0
    for name, by_backend in table.items():
        cells = []
        for b in backends:
            p50, p95 = by_backend[b]
            cells += [f"{p50:.1f}", f"{p95:.1f}"]
            if b == "postgres":
                worst = max(worst, p95)
        print(f"| {name} | " + " | ".join(cells) + " |")
    if "postgres" in backends:
        verdict = "meets" if worst <= 100 else "misses"
        print(f"\nWorst p95 on PostgreSQL: {worst:.1f} ms ({verdict} the 100 ms target)")


if __name__ == "__main__":
    main()
