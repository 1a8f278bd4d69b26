"""Build a large run history fast, for the API benchmark (``bench_api.py``).

Runs, their steps, some log lines and a few workers are generated in Python and written in
bulk with the raw driver: ``COPY`` on PostgreSQL, one ``executemany`` transaction on SQLite.
The schema is created first by Legato itself (``open_store`` runs the migrations), so the
tables and indexes are exactly the product's. The run ``INSERT`` trigger records one
``run_events`` row per run, as in production.

The history spans ``--days`` days up to now, oldest first; 20 flows with a skewed mix
(``flow_00`` busiest), three queues, ~90% succeeded, ~7% failed (with a failed step and a
traceback), ~3% cancelled, and the newest ``--active`` runs queued or running.

    python benchmarks/seed_history.py --url 'postgresql://postgres@127.0.0.1/test?schema=api_1m' --runs 1000000
    python benchmarks/seed_history.py --url sqlite:////tmp/api_100k.db --runs 100000
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from legato.store import open_store, parse_url

FLOWS = [f"flow_{i:02d}" for i in range(20)]
FLOW_WEIGHTS = [1 / (i + 1) for i in range(len(FLOWS))]  # Zipf-like: flow_00 busiest
QUEUE_OF = {
    f: ("default" if i < 14 else "reports" if i < 17 else "etl") for i, f in enumerate(FLOWS)
}
STEP_NAMES = ("extract", "transform", "load", "notify", "archive")
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/flows.py", line 41, in transform\n'
    "    rows = [parse(r) for r in batch]\n"
    '  File "/srv/app/flows.py", line 17, in parse\n'
    '    raise ValueError(f"bad row {n}")\n'
    "ValueError: bad row {n}\n"
)

RUN_COLUMNS = (
    "id",
    "flow",
    "status",
    "params",
    "result",
    "error",
    "traceback",
    "failed_step",
    "attempts",
    "max_attempts",
    "queue",
    "priority",
    "trigger",
    "worker_id",
    "created_at",
    "scheduled_for",
    "started_at",
    "finished_at",
)
STEP_COLUMNS = (
    "run_id",
    "position",
    "name",
    "status",
    "attempts",
    "run_attempt",
    "started_at",
    "finished_at",
    "result",
    "error",
    "traceback",
)
LOG_COLUMNS = ("run_id", "ts", "level", "step", "attempt", "message")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class History:
    """Deterministic (seeded) rows of runs, steps and logs."""

    def __init__(
        self,
        runs: int,
        days: float,
        steps: int,
        log_every: int,
        active: int,
        now_ms: int,
        seed: int = 7,
    ) -> None:
        self.runs = runs
        self.steps = steps
        self.log_every = log_every
        self.active = min(active, runs)
        self.now_ms = now_ms
        self.start_ms = now_ms - int(days * 86_400_000)
        self.rng = random.Random(seed)
        self.workers = [f"bench-host-{h}:{1000 + h}:{h:06x}" for h in range(6)]

    def generate(
        self,
    ) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
        """Per run: its row, its step rows and its log rows."""
        rng = self.rng
        span = self.now_ms - self.start_ms - 60_000
        flows = rng.choices(FLOWS, weights=FLOW_WEIGHTS, k=self.runs)
        for i in range(self.runs):
            created = self.start_ms + span * i // self.runs + rng.randrange(0, 50)
            run_id = f"{created:012x}{rng.getrandbits(80):020x}"
            flow = flows[i]
            queue = QUEUE_OF[flow]
            roll = rng.random()
            trigger = "schedule" if roll < 0.6 else "manual" if roll < 0.95 else "retry"
            wait = rng.randrange(1, 40)
            duration = rng.randrange(20, 5000)
            started: int | None = created + wait
            finished: int | None = created + wait + duration
            worker: str | None = self.workers[i % len(self.workers)]
            result = error = traceback = failed_step = None
            attempts = 1
            n_steps = self.steps
            if i >= self.runs - self.active:  # the newest: still waiting or running
                status = "running" if rng.random() < 0.3 else "queued"
                finished = None
                if status == "queued":
                    started = worker = None
                    n_steps = 0
                else:
                    n_steps = min(1, self.steps)
            else:
                roll = rng.random()
                if roll < 0.90:
                    status, result = "succeeded", str(rng.randrange(1000))
                    attempts = 1 if rng.random() < 0.95 else 2
                elif roll < 0.97:
                    status, attempts = "failed", 3
                    bad = rng.randrange(1, 500)
                    error = f"ValueError: bad row {bad}"
                    traceback = TRACEBACK.format(n=bad)
                    failed_step = STEP_NAMES[min(1, self.steps - 1)] if self.steps else None
                    n_steps = min(2, self.steps)
                else:
                    status, error = "cancelled", "cancelled"
                    n_steps = min(1, self.steps)
            run = (
                run_id,
                flow,
                status,
                json.dumps({"day": f"2026-11-{1 + i % 28:02d}", "batch": i % 100}),
                result,
                error,
                traceback,
                failed_step,
                attempts,
                3,
                queue,
                0,
                trigger,
                worker,
                created,
                created,
                started,
                finished,
            )
            steps = []
            t = (started or created) + 1
            step_span = max(1, duration // max(1, n_steps))
            for pos in range(n_steps):
                name = STEP_NAMES[pos % len(STEP_NAMES)]
                last = pos == n_steps - 1
                if last and status == "failed":
                    steps.append(
                        (
                            run_id,
                            pos,
                            name,
                            "failed",
                            6,
                            3,
                            t,
                            t + step_span,
                            None,
                            error,
                            traceback,
                        )
                    )
                elif last and status == "running":
                    steps.append((run_id, pos, name, "running", 1, 1, t, None, None, None, None))
                else:
                    steps.append(
                        (
                            run_id,
                            pos,
                            name,
                            "succeeded",
                            1,
                            attempts,
                            t,
                            t + step_span,
                            "1",
                            None,
                            None,
                        )
                    )
                t += step_span
            logs = []
            if self.log_every and i % self.log_every == 0 and n_steps:
                for k in range(5):
                    step = STEP_NAMES[k % n_steps]
                    logs.append(
                        (
                            run_id,
                            (started or created) + k,
                            "INFO",
                            step,
                            1,
                            f"{step}: row batch {k} done",
                        )
                    )
            yield run, steps, logs


def insert_sql(table: str, columns: tuple[str, ...], style: str) -> str:
    marks = ", ".join("?" if style == "qmark" else "%s" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def seed_flows_and_workers(execute: Any, now_ms: int, workers: list[str], style: str) -> None:
    flow_sql = insert_sql(
        "flows", ("name", "description", "queue", "max_attempts", "updated_at"), style
    )
    for flow in FLOWS:
        execute(flow_sql, (flow, f"Benchmark flow {flow}", QUEUE_OF[flow], 3, now_ms))
    worker_sql = insert_sql(
        "workers",
        (
            "id",
            "hostname",
            "pid",
            "queues",
            "concurrency",
            "running",
            "started_at",
            "last_heartbeat",
        ),
        style,
    )
    for w in workers:
        host, pid, _ = w.split(":")
        queues = json.dumps(["default", "reports", "etl"])
        execute(worker_sql, (w, host, int(pid), queues, 8, 0, now_ms - 3_600_000, now_ms))


def seed_postgres(url: str, history: History, batch: int) -> None:
    import psycopg

    parsed = parse_url(url)
    assert parsed.conninfo is not None
    with psycopg.connect(parsed.conninfo, options=f"-c search_path={parsed.schema}") as conn:
        with conn.cursor() as cur:
            seed_flows_and_workers(cur.execute, history.now_ms, history.workers, "format")
        conn.commit()
        done = 0
        started = time.perf_counter()
        rows = history.generate()
        while done < history.runs:
            runs, steps, logs = [], [], []
            for run, run_steps, run_logs in rows:
                runs.append(run)
                steps.extend(run_steps)
                logs.extend(run_logs)
                if len(runs) == batch:
                    break
            with conn.cursor() as cur:
                for table, columns, data in (
                    ("runs", RUN_COLUMNS, runs),
                    ("steps", STEP_COLUMNS, steps),
                    ("logs", LOG_COLUMNS, logs),
                ):
                    if data:
                        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                            for row in data:
                                copy.write_row(row)
            conn.commit()
            done += len(runs)
            rate = done / (time.perf_counter() - started)
            log(f"{done:,} / {history.runs:,} runs ({rate:,.0f} runs/s)")
        conn.autocommit = True
        log("VACUUM ANALYZE")
        for table in ("runs", "steps", "logs", "run_events", "flows", "workers"):
            conn.execute(f"VACUUM ANALYZE {table}")


def seed_sqlite(url: str, history: History, batch: int) -> None:
    parsed = parse_url(url)
    assert parsed.path is not None
    conn = sqlite3.connect(parsed.path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    seed_flows_and_workers(conn.execute, history.now_ms, history.workers, "qmark")
    conn.execute("COMMIT")
    run_sql = insert_sql("runs", RUN_COLUMNS, "qmark")
    step_sql = insert_sql("steps", STEP_COLUMNS, "qmark")
    log_sql = insert_sql("logs", LOG_COLUMNS, "qmark")
    done = 0
    started = time.perf_counter()
    rows = history.generate()
    while done < history.runs:
        runs, steps, logs = [], [], []
        for run, run_steps, run_logs in rows:
            runs.append(run)
            steps.extend(run_steps)
            logs.extend(run_logs)
            if len(runs) == batch:
                break
        conn.execute("BEGIN")
        conn.executemany(run_sql, runs)
        conn.executemany(step_sql, steps)
        conn.executemany(log_sql, logs)
        conn.execute("COMMIT")
        done += len(runs)
        log(
            f"{done:,} / {history.runs:,} runs ({done / (time.perf_counter() - started):,.0f} runs/s)"
        )
    # No ANALYZE: Legato never runs it on SQLite, so the planner's defaults are what
    # deployments get (with sqlite_stat1, SQLite 3.4x scans runs_flow_created for the
    # active-run counts, believing 'running' as common as 'succeeded').
    conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", required=True, help="a fresh database: sqlite:///FILE or postgresql://...?schema=S"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="runs [1,000,000 on PostgreSQL, 100,000 on SQLite]"
    )
    parser.add_argument("--days", type=float, default=30, help="history span, up to now [30]")
    parser.add_argument("--steps", type=int, default=2, help="steps per finished run [2]")
    parser.add_argument(
        "--log-every", type=int, default=10, help="every Nth run has 5 log lines [10]"
    )
    parser.add_argument(
        "--active", type=int, default=200, help="newest runs left queued/running [200]"
    )
    parser.add_argument("--batch", type=int, default=20_000, help="runs per transaction [20,000]")
    args = parser.parse_args(argv)

    parsed = parse_url(args.url)
    runs = args.runs or (1_000_000 if parsed.backend == "postgresql" else 100_000)
    store = open_store(args.url)  # creates and migrates the schema
    try:
        if store.list_flows():
            parser.error(f"{parsed.redacted()} already holds flows: seed a fresh database")
        now_ms = store.now_ms()
    finally:
        store.close()
    history = History(runs, args.days, args.steps, args.log_every, args.active, now_ms)
    started = time.perf_counter()
    log(f"seeding {runs:,} runs over {args.days:g} days into {parsed.redacted()}")
    if parsed.backend == "postgresql":
        seed_postgres(args.url, history, args.batch)
    else:
        seed_sqlite(args.url, history, args.batch)
    log(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
