"""Throughput under flow control, against the unlimited figure, on SQLite and PostgreSQL.

Scenarios (each on a fresh database, runs created in bulk first, then executed by
``--procs`` ``legato worker`` processes of ``--concurrency`` slots):

- **unlimited**: no-op runs of a flow without any limit (the plain claim);
- **per-key limit**: no-op runs of a flow with ``concurrency=1, concurrency_key="k"`` spread
  over ``--keys`` keys (1,000 by default): at most one running per key (the gated claim);
- **strict queue**: no-op runs in a strict queue: one at a time, in submission order, across
  all workers (inherently serial: its figure is the cost of one claim + run + finish).

Throughput is measured in the database like ``bench_engine.py``'s e2e figure:
``runs / (max(finished_at) - min(started_at))``. Usage::

    .venv/bin/python benchmarks/bench_limits.py                 # both backends
    .venv/bin/python benchmarks/bench_limits.py --quick --backend sqlite
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from legato import App  # noqa: E402
from legato.app import new_run_id  # noqa: E402
from legato.limits import encode_keys  # noqa: E402
from legato.store import NewRun  # noqa: E402

SPEC = f"{Path(__file__).resolve()}:app"


def make_app(database_url: str | None = None) -> App:
    bench = App(database_url)

    @bench.flow
    def noop() -> None:
        return None

    @bench.flow(concurrency=1, concurrency_key="k")
    def keyed(k: int) -> None:
        return None

    @bench.flow(queue="strict")
    def in_order(i: int) -> None:
        return None

    return bench


app = make_app()


def enqueue(bench: App, flow: str, count: int, keys: int) -> None:
    control = bench.flows[flow].control
    queue = bench.flows[flow].queue
    for start in range(0, count, 1000):
        runs = []
        for i in range(start, min(count, start + 1000)):
            params: dict[str, Any] = {}
            if flow == "keyed":
                params = {"k": i % keys}
            elif flow == "in_order":
                params = {"i": i}
            runs.append(
                NewRun(
                    id=new_run_id(),
                    flow=flow,
                    params=_json(params),
                    queue=queue,
                    limit_keys=encode_keys(control.keys(params)),
                )
            )
        bench.store.create_runs(runs)


def _json(value: dict[str, Any]) -> str:
    import json

    return json.dumps(value)


def run_scenario(
    backend: str, flow: str, count: int, keys: int, procs: int, concurrency: int, logdir: Path
) -> dict[str, Any]:
    from bench_engine import fresh_database, span, stop_workers, wait_finished

    with fresh_database(backend) as db:
        bench = make_app(db.url)
        bench.register()
        if flow == "in_order":
            bench.store.set_queue("strict", paused=False, strict=True, concurrency=None)
        enqueue(bench, flow, count, keys)
        bench.close()
        group = _start(db, procs, concurrency, bench.flows[flow].queue, logdir)
        try:
            wait_finished(db, count, group, timeout=max(300.0, count / 20))
        finally:
            stop_workers(group)
        s = span(db)
        overlaps = 0
        if flow == "in_order":  # in submission order, each starts after the previous ended
            seq = "rowid" if backend == "sqlite" else "seq"
            rows = db.query(f"SELECT started_at, finished_at FROM runs ORDER BY {seq}")
            overlaps = sum(1 for a, b in itertools.pairwise(rows) if b[0] < a[1])
    if s["not_succeeded"]:
        raise RuntimeError(f"{s['not_succeeded']} runs did not succeed")
    return {
        "runs": s["runs"],
        "runs_per_s": s["runs"] / (s["elapsed_ms"] / 1000),
        "overlaps": overlaps,
    }


def _start(db: Any, procs: int, concurrency: int, queue: str, logdir: Path) -> Any:
    from bench_engine import WorkerGroup, legato_command, wait_workers_registered

    env = dict(os.environ)
    env["LEGATO_DATABASE_URL"] = db.url
    env["LEGATO_GRACE_SECONDS"] = "10"
    cmd = [*legato_command(), "worker", SPEC, "--db", db.url, "-c", str(concurrency)]
    cmd += ["--queue", queue]
    group_procs, logs = [], []
    for i in range(procs):
        path = logdir / f"limits-worker-{i}-{uuid.uuid4().hex[:6]}.log"
        with open(path, "wb") as out:
            group_procs.append(
                subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=HERE)
            )
        logs.append(path)
    group = WorkerGroup(group_procs, logs)
    wait_workers_registered(db, group)
    return group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--runs", type=int, default=5000, help="runs per scenario")
    parser.add_argument("--strict-runs", type=int, default=1000, help="runs in the strict queue")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (2,000 / 300 runs)")
    parser.add_argument(
        "--only", default="unlimited,keyed,strict", help="scenarios: unlimited,keyed,strict"
    )
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.runs, opts.strict_runs = 2000, 300
    backends = ["sqlite", "postgres"] if opts.backend == "both" else [opts.backend]
    logdir = Path(tempfile.mkdtemp(prefix="legato-bench-limits-"))
    print(
        f"{opts.procs} worker process(es) x {opts.concurrency} slots; "
        f"{opts.runs} runs per scenario ({opts.keys} keys), {opts.strict_runs} in the strict queue",
        flush=True,
    )
    header = f"{'backend':<11} {'scenario':<34} {'runs':>6} {'runs/s':>8} {'vs unlimited':>13}"
    lines = [header, "-" * len(header)]
    for backend in backends:
        base = None
        scenarios = {
            "unlimited": ("unlimited", "noop", opts.runs),
            "keyed": (f"per-key limit ({opts.keys} keys, 1 each)", "keyed", opts.runs),
            "strict": ("strict queue (one at a time)", "in_order", opts.strict_runs),
        }
        for name in opts.only.split(","):
            label, flow, count = scenarios[name]
            began = time.monotonic()
            r = run_scenario(backend, flow, count, opts.keys, opts.procs, opts.concurrency, logdir)
            base = base or r["runs_per_s"]
            ratio = r["runs_per_s"] / base
            note = f"  ({r['overlaps']} overlaps)" if flow == "in_order" else ""
            line = (
                f"{backend:<11} {label:<34} {r['runs']:>6} {r['runs_per_s']:>8,.0f} "
                f"{ratio:>12.2f}x{note}"
            )
            print(f"{line}   [{time.monotonic() - began:.0f}s]", file=sys.stderr, flush=True)
            lines.append(line)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
