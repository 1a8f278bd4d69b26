"""Engine benchmarks for Legato on SQLite and PostgreSQL.

Run ``python benchmarks/bench_engine.py --help`` for the options and
``benchmarks/README.md`` for what each figure means. In short, per backend:

1. **e2e**: throughput of no-op runs, enqueued in bulk first, then executed by 1 and 2
   ``legato worker`` processes, over a grid of concurrency and claim batch settings; the
   time is measured in the database, from the first ``started_at`` to the last ``finished_at``.
2. **enqueue**: ``flow.submit()`` one at a time, and ``store.create_runs`` in batches.
3. **latency**: enqueue-to-start (``started_at - created_at``, both from the database clock)
   with an idle worker, runs submitted one at a time with a small gap.
4. **steps**: the cost of one step checkpoint, from a flow with 0 vs 20 no-op steps.
5. **ceiling**: the database's own single-row INSERT commits per second on this machine.

Every benchmark uses a fresh database: a temporary SQLite file, or a fresh PostgreSQL schema
(``?schema=bench_<random>``) dropped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_flows import make_app  # noqa: E402

from legato.app import new_run_id  # noqa: E402
from legato.store import NewRun, Store  # noqa: E402

PG_BASE_URL = os.environ.get("LEGATO_BENCH_PG", "postgresql://postgres@127.0.0.1/test")
FLOWS_SPEC = f"{HERE / 'bench_flows.py'}:app"
TERMINAL_SQL = "('succeeded', 'failed', 'cancelled')"
BACKENDS = ("sqlite", "postgres")
LABEL = {"sqlite": "SQLite", "postgres": "PostgreSQL"}

# Targets from the brief. Key -> (direction, value): ">=" means higher is better.
TARGETS: dict[str, dict[str, tuple[str, float]]] = {
    "postgres": {
        "e2e_1": (">=", 4500),
        "e2e_2": (">=", 4500),
        "e2e_best": (">=", 4500),
        "latency_p50": ("<=", 2),
        "latency_p99": ("<=", 5),
        "submit": (">=", 2500),
        "bulk": (">=", 25000),
        "step_ms": ("<=", 1.0),
    },
    "sqlite": {
        "e2e_1": (">=", 5000),
        "latency_p50": ("<=", 5),
        "step_ms": ("<=", 0.3),
    },
}


# -- small helpers ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


class MachineLoad:
    """Fraction of the machine's CPU in use (all processes, ours included) between two points."""

    def __init__(self) -> None:
        self.start = cpu_times()

    def busy(self) -> float:
        busy, total = cpu_times()
        return (busy - self.start[0]) / max(1, total - self.start[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def legato_command() -> list[str]:
    exe = Path(sys.executable).with_name("legato")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("legato")
    if found:
        return [found]
    return [sys.executable, "-c", "from legato.cli import main; main()"]


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=HERE.parent, check=True, capture_output=True, text=True
    ).stdout.strip()


def reexec_in_snapshot(rev: str, script: Path, argv: Sequence[str]) -> None:
    """Re-run ``script`` with ``legato`` imported from ``git archive <rev>`` (PYTHONPATH wins
    over the editable install, in this process and in the worker processes it starts), so a
    benchmark measures one commit even while others edit the working tree."""
    if os.environ.get("LEGATO_BENCH_SNAPSHOT"):
        return
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    dest = Path(tempfile.mkdtemp(prefix=f"legato-snapshot-{commit[:8]}-"))
    archive = subprocess.run(
        ["git", "archive", commit, "legato"], cwd=HERE.parent, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(dest), env.get("PYTHONPATH")]))
    env["LEGATO_BENCH_SNAPSHOT"] = commit
    log(f"benchmarking legato from commit {commit[:10]} (snapshot in {dest})")
    os.execve(sys.executable, [sys.executable, str(script), *argv], env)


def legato_source() -> str:
    """Which legato code is measured: a snapshot commit, or the working tree."""
    import legato

    where = Path(legato.__file__).resolve().parent
    snapshot = os.environ.get("LEGATO_BENCH_SNAPSHOT")
    try:
        subject = git("log", "-1", "--format=%h %s", snapshot or "HEAD")
    except (subprocess.CalledProcessError, OSError):
        subject = "?"
    if snapshot:
        return f"snapshot of commit {subject} (imported from {where})"
    try:
        dirty = bool(git("status", "--porcelain", "--", "legato"))
    except (subprocess.CalledProcessError, OSError):
        dirty = False
    state = "with uncommitted changes" if dirty else "clean"
    return f"working tree ({state}) at commit {subject}"


# -- fresh databases -------------------------------------------------------------------------


@dataclass
class Database:
    """A fresh database for one benchmark, plus a raw connection to measure with."""

    backend: str
    url: str
    schema: str | None = None
    path: Path | None = None
    _conn: Any = None

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self._conn is None:
            if self.backend == "sqlite":
                self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            else:
                import psycopg

                self._conn = psycopg.connect(
                    PG_BASE_URL, autocommit=True, options=f"-c search_path={self.schema}"
                )
        return list(self._conn.execute(sql).fetchall())

    def scalar(self, sql: str) -> Any:
        return self.query(sql)[0][0]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@contextlib.contextmanager
def fresh_database(backend: str) -> Iterator[Database]:
    if backend == "sqlite":
        tmp = Path(tempfile.mkdtemp(prefix="legato-bench-"))
        path = tmp / "bench.db"
        db = Database("sqlite", f"sqlite:///{path}", path=path)
        try:
            yield db
        finally:
            db.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in PG_BASE_URL else "?"
    db = Database("postgres", f"{PG_BASE_URL}{sep}schema={schema}", schema=schema)
    try:
        yield db
    finally:
        db.close()
        with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- workers -----------------------------------------------------------------------------------


@dataclass
class WorkerGroup:
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(p.pid) for p in self.procs)

    def check_alive(self) -> None:
        for p, path in zip(self.procs, self.logs, strict=True):
            if p.poll() is not None:
                tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
                raise RuntimeError(f"worker {p.pid} exited with {p.returncode}:\n{tail}")


def start_workers(
    db: Database, count: int, concurrency: int, claim_batch: int | None, logdir: Path
) -> WorkerGroup:
    env = dict(os.environ)
    env["LEGATO_DATABASE_URL"] = db.url
    env["LEGATO_GRACE_SECONDS"] = "10"
    env.setdefault("PYTHONUNBUFFERED", "1")
    if claim_batch is not None:
        env["LEGATO_CLAIM_BATCH"] = str(claim_batch)
    cmd = [*legato_command(), "worker", FLOWS_SPEC, "--db", db.url, "-c", str(concurrency)]
    procs, logs = [], []
    for i in range(count):
        path = logdir / f"worker-{i}-{uuid.uuid4().hex[:6]}.log"
        with open(path, "wb") as out:
            procs.append(
                subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=HERE)
            )
        logs.append(path)
    return WorkerGroup(procs, logs)


def wait_workers_registered(db: Database, group: WorkerGroup, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        group.check_alive()
        with contextlib.suppress(Exception):
            if db.scalar("SELECT COUNT(*) FROM workers WHERE stopped_at IS NULL") >= len(
                group.procs
            ):
                return
        time.sleep(0.05)
    raise TimeoutError("workers did not register in time")


def stop_workers(group: WorkerGroup, timeout: float = 30) -> None:
    for p in group.procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in group.procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_finished(
    db: Database, expected: int, group: WorkerGroup | None, timeout: float, poll: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = db.scalar(f"SELECT COUNT(*) FROM runs WHERE status IN {TERMINAL_SQL}")
        if done >= expected:
            return
        if group is not None:
            group.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{expected} runs finished after {timeout:.0f}s")
        time.sleep(poll)


def bulk_enqueue(
    store: Store, flow: str, count: int, *, params: str = "{}", batch: int = 1000, priority: int = 0
) -> None:
    for start in range(0, count, batch):
        store.create_runs(
            [
                NewRun(
                    id=new_run_id(), flow=flow, params=params, queue="default", priority=priority
                )
                for _ in range(min(batch, count - start))
            ]
        )


def span(db: Database, where: str = "1 = 1") -> dict[str, Any]:
    n, first_start, last_finish, bad = db.query(
        "SELECT COUNT(*), MIN(started_at), MAX(finished_at), "
        "SUM(CASE WHEN status <> 'succeeded' THEN 1 ELSE 0 END) "
        f"FROM runs WHERE {where}"
    )[0]
    elapsed_ms = max(1, int(last_finish) - int(first_start))
    return {"runs": int(n), "elapsed_ms": elapsed_ms, "not_succeeded": int(bad or 0)}


# -- 1. end-to-end throughput ------------------------------------------------------------------


def cpu_baselines(db: Database, group: WorkerGroup, timeout: float = 60) -> dict[int, float]:
    """Each worker's CPU seconds when it registered (imports, connect, migrations check): the
    start-up cost left out of the per-run CPU figure. Polls every 5 ms."""
    baselines: dict[int, float] = {}
    wanted = {p.pid for p in group.procs}
    deadline = time.monotonic() + timeout
    while len(baselines) < len(wanted):
        if time.monotonic() > deadline:
            raise TimeoutError("workers did not register in time")
        group.check_alive()
        with contextlib.suppress(Exception):
            for (pid,) in db.query("SELECT pid FROM workers"):
                if pid in wanted and pid not in baselines:
                    baselines[pid] = process_cpu_seconds(pid)
        time.sleep(0.005)
    return baselines


def bench_e2e_once(
    backend: str,
    runs: int,
    procs: int,
    concurrency: int,
    claim_batch: int,
    logdir: Path,
) -> dict[str, Any]:
    with fresh_database(backend) as db:
        app = make_app(db.url)
        app.register()
        bulk_enqueue(app.store, "noop", runs)
        app.close()
        load = MachineLoad()
        wall = time.monotonic()
        group = start_workers(db, procs, concurrency, claim_batch, logdir)
        try:
            baselines = cpu_baselines(db, group)
            wait_finished(db, runs, group, timeout=max(180.0, runs / 50))
            cpu = group.cpu_seconds() - sum(baselines.values())
            busy = load.busy()
            wall = time.monotonic() - wall
        finally:
            stop_workers(group)
        s = span(db)
    if s["not_succeeded"]:
        raise RuntimeError(f"{s['not_succeeded']} runs did not succeed")
    return {
        "runs_per_s": s["runs"] / (s["elapsed_ms"] / 1000),
        "elapsed_ms": s["elapsed_ms"],
        "wall_s_incl_startup": wall,
        "worker_cpu_ms_per_run": 1000 * cpu / runs,
        "machine_busy": busy,
    }


def bench_e2e(backend: str, opts: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    configs: list[tuple[int, int, int]] = []
    for procs in opts.procs:
        for conc in opts.concurrency:
            seen: set[int] = set()
            for batch in opts.claim_batch:
                effective = min(batch, conc)
                if effective in seen:
                    continue
                seen.add(effective)
                configs.append((procs, conc, effective))
    results = []
    for procs, conc, batch in configs:
        samples = []
        for i in range(opts.runs):
            try:
                r = bench_e2e_once(backend, opts.e2e_runs, procs, conc, batch, logdir)
            except Exception as exc:  # one bad configuration must not lose the others
                log(
                    f"{LABEL[backend]} e2e procs={procs} concurrency={conc} claim_batch={batch} "
                    f"#{i + 1} FAILED: {type(exc).__name__}: {exc}"
                )
                continue
            samples.append(r)
            log(
                f"{LABEL[backend]} e2e procs={procs} concurrency={conc} claim_batch={batch} "
                f"#{i + 1}: {r['runs_per_s']:,.0f} runs/s, worker CPU "
                f"{r['worker_cpu_ms_per_run']:.3f} ms/run, machine busy {r['machine_busy']:.0%}"
            )
        if not samples:
            continue
        results.append(
            {
                "procs": procs,
                "concurrency": conc,
                "claim_batch": batch,
                "runs_per_s": median([s["runs_per_s"] for s in samples]),
                "samples": samples,
                "worker_cpu_ms_per_run": median([s["worker_cpu_ms_per_run"] for s in samples]),
                "machine_busy": median([s["machine_busy"] for s in samples]),
            }
        )
    if not results:
        raise RuntimeError("every e2e configuration failed")
    best_by_procs = {}
    for procs in opts.procs:
        mine = [r for r in results if r["procs"] == procs]
        if mine:
            best_by_procs[procs] = max(mine, key=lambda r: r["runs_per_s"])
    best = max(results, key=lambda r: r["runs_per_s"])
    return {
        "runs": opts.e2e_runs,
        "grid": results,
        "best_by_procs": best_by_procs,
        "best": best,
    }


# -- 2. enqueue throughput ---------------------------------------------------------------------


def bench_submit_once(backend: str, count: int) -> float:
    with fresh_database(backend) as db:
        app = make_app(db.url)
        noop = app.flows["noop"]
        noop.submit()  # registers the flows and opens the store: not part of the timing
        start = time.perf_counter()
        for _ in range(count):
            noop.submit()
        elapsed = time.perf_counter() - start
        app.close()
        assert db.scalar("SELECT COUNT(*) FROM runs") == count + 1
    return count / elapsed


def bench_bulk_once(backend: str, count: int, batch: int) -> float:
    with fresh_database(backend) as db:
        app = make_app(db.url)
        app.register()
        store = app.store
        start = time.perf_counter()
        bulk_enqueue(store, "noop", count, batch=batch)
        elapsed = time.perf_counter() - start
        app.close()
        assert db.scalar("SELECT COUNT(*) FROM runs") == count
    return count / elapsed


def bench_enqueue(backend: str, opts: argparse.Namespace) -> dict[str, Any]:
    submit = [bench_submit_once(backend, opts.submit_runs) for _ in range(opts.runs)]
    log(f"{LABEL[backend]} submit one at a time: " + ", ".join(f"{x:,.0f}/s" for x in submit))
    bulk = [bench_bulk_once(backend, opts.bulk_runs, opts.bulk_batch) for _ in range(opts.runs)]
    log(f"{LABEL[backend]} bulk create_runs: " + ", ".join(f"{x:,.0f}/s" for x in bulk))
    return {
        "submit_per_s": median(submit),
        "submit_samples": submit,
        "bulk_per_s": median(bulk),
        "bulk_samples": bulk,
        "submit_runs": opts.submit_runs,
        "bulk_runs": opts.bulk_runs,
        "bulk_batch": opts.bulk_batch,
    }


# -- 3. enqueue -> start latency ---------------------------------------------------------------


def bench_latency_once(
    backend: str, count: int, gap: float, concurrency: int, logdir: Path
) -> dict[str, Any]:
    with fresh_database(backend) as db:
        app = make_app(db.url)
        noop = app.flows["noop"]
        app.register()
        group = start_workers(db, 1, concurrency, None, logdir)
        try:
            wait_workers_registered(db, group)
            time.sleep(0.5)  # let the worker reach its idle wait
            for _ in range(count):
                noop.submit()
                time.sleep(gap)
            wait_finished(db, count, group, timeout=120)
        finally:
            stop_workers(group)
            app.close()
        rows = db.query("SELECT started_at - created_at, finished_at - created_at FROM runs")
    start = [float(r[0]) for r in rows]
    finish = [float(r[1]) for r in rows]
    return {
        "p50": percentile(start, 50),
        "p90": percentile(start, 90),
        "p99": percentile(start, 99),
        "max": max(start),
        "mean": statistics.fmean(start),
        "finish_p50": percentile(finish, 50),
        "finish_p99": percentile(finish, 99),
    }


def bench_latency(backend: str, opts: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    samples = []
    for i in range(opts.runs):
        r = bench_latency_once(
            backend, opts.latency_runs, opts.latency_gap, opts.latency_concurrency, logdir
        )
        samples.append(r)
        log(
            f"{LABEL[backend]} latency #{i + 1}: start p50 {r['p50']:.0f} ms, "
            f"p99 {r['p99']:.0f} ms, max {r['max']:.0f} ms; finish p50 {r['finish_p50']:.0f} ms"
        )
    keys = ("p50", "p90", "p99", "max", "mean", "finish_p50", "finish_p99")
    return {
        **{k: median([s[k] for s in samples]) for k in keys},
        "samples": samples,
        "runs": opts.latency_runs,
        "gap_ms": opts.latency_gap * 1000,
        "concurrency": opts.latency_concurrency,
    }


# -- 4. step checkpoint cost -------------------------------------------------------------------


def bench_steps_once(
    backend: str, count: int, n_steps: int, concurrency: int, logdir: Path
) -> dict[str, Any]:
    with fresh_database(backend) as db:
        app = make_app(db.url)
        app.register()
        # The 0-step runs go first (higher priority), then the n-step ones: two clean phases.
        bulk_enqueue(app.store, "steps", count, params='{"n":0}', priority=1)
        bulk_enqueue(app.store, "steps", count, params=json.dumps({"n": n_steps}), priority=0)
        app.close()
        group = start_workers(db, 1, concurrency, None, logdir)
        try:
            wait_finished(db, 2 * count, group, timeout=max(180.0, count * n_steps / 100))
        finally:
            stop_workers(group)
        base = span(db, "priority = 1")
        heavy = span(db, "priority = 0")
        durations = {
            prio: [
                float(r[0])
                for r in db.query(
                    f"SELECT finished_at - started_at FROM runs WHERE priority = {prio}"
                )
            ]
            for prio in (0, 1)
        }
        steps_written = db.scalar("SELECT COUNT(*) FROM steps WHERE status = 'succeeded'")
    if base["not_succeeded"] or heavy["not_succeeded"]:
        raise RuntimeError("some step benchmark runs did not succeed")
    if steps_written != count * n_steps:
        raise RuntimeError(f"expected {count * n_steps} step rows, found {steps_written}")
    per_run_base = base["elapsed_ms"] / count
    per_run_heavy = heavy["elapsed_ms"] / count
    return {
        "step_ms": (per_run_heavy - per_run_base) / n_steps,
        "per_run_ms_0_steps": per_run_base,
        "per_run_ms_n_steps": per_run_heavy,
        "median_duration_ms_0": median(durations[1]),
        "median_duration_ms_n": median(durations[0]),
        "step_ms_from_durations": (median(durations[0]) - median(durations[1])) / n_steps,
    }


def bench_steps(backend: str, opts: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": opts.step_runs, "steps": opts.steps}
    for conc in opts.step_concurrency:
        samples = []
        for i in range(opts.runs):
            r = bench_steps_once(backend, opts.step_runs, opts.steps, conc, logdir)
            samples.append(r)
            log(
                f"{LABEL[backend]} steps concurrency={conc} #{i + 1}: {r['step_ms']:.3f} ms/step "
                f"({r['per_run_ms_0_steps']:.2f} ms/run with 0 steps, "
                f"{r['per_run_ms_n_steps']:.2f} with {opts.steps})"
            )
        out[f"c{conc}"] = {
            "step_ms": median([s["step_ms"] for s in samples]),
            "per_run_ms_0_steps": median([s["per_run_ms_0_steps"] for s in samples]),
            "per_run_ms_n_steps": median([s["per_run_ms_n_steps"] for s in samples]),
            "step_ms_from_durations": median([s["step_ms_from_durations"] for s in samples]),
            "samples": samples,
        }
    return out


# -- 5. database ceiling -----------------------------------------------------------------------


def sqlite_ceiling(seconds: float, explicit_tx: bool) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="legato-ceiling-"))
    try:
        conn = sqlite3.connect(str(tmp / "ceiling.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE scratch (id INTEGER PRIMARY KEY, v TEXT NOT NULL, ts INTEGER)")
        sql = "INSERT INTO scratch (v, ts) VALUES (?, ?)"
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(200):
                if explicit_tx:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(sql, ("x" * 32, n))
                    conn.execute("COMMIT")
                else:
                    conn.execute(sql, ("x" * 32, n))
                n += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        conn.close()
        return n / (now - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pg_insert_client(args: tuple[str, str, float]) -> int:
    url, schema, start_at = args
    import psycopg

    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        sql = "INSERT INTO scratch (v, ts) VALUES (%s, %s)"
        conn.execute(sql, ("warm-up", 0))
        while time.time() < start_at:
            time.sleep(0.001)
        end_at = start_at + _pg_insert_client.seconds  # type: ignore[attr-defined]
        n = 0
        while time.time() < end_at:
            conn.execute(sql, ("x" * 32, n))
            n += 1
    return n


def _pg_client_init(seconds: float) -> None:
    _pg_insert_client.seconds = seconds  # type: ignore[attr-defined]


def pg_ceiling(seconds: float, clients: int) -> float:
    with fresh_database("postgres") as db:
        import psycopg

        with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{db.schema}"')
            conn.execute(
                f'CREATE TABLE "{db.schema}".scratch '
                "(id BIGSERIAL PRIMARY KEY, v TEXT NOT NULL, ts BIGINT)"
            )
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(clients, initializer=_pg_client_init, initargs=(seconds,)) as pool:
            start_at = time.time() + 1.5
            counts = pool.map(
                _pg_insert_client, [(PG_BASE_URL, db.schema, start_at)] * clients, chunksize=1
            )
        assert db.schema is not None
        return sum(counts) / seconds


def bench_ceiling(backend: str, opts: argparse.Namespace) -> dict[str, Any]:
    if backend == "sqlite":
        autocommit = [sqlite_ceiling(opts.ceiling_seconds, False) for _ in range(opts.runs)]
        explicit = [sqlite_ceiling(opts.ceiling_seconds, True) for _ in range(opts.runs)]
        log(
            "SQLite ceiling: "
            + ", ".join(f"{x:,.0f}/s" for x in autocommit)
            + " (BEGIN IMMEDIATE + INSERT + COMMIT: "
            + ", ".join(f"{x:,.0f}/s" for x in explicit)
            + ")"
        )
        return {
            "commits_per_s": median(autocommit),
            "samples": autocommit,
            "explicit_tx_commits_per_s": median(explicit),
            "explicit_tx_samples": explicit,
            "clients": 1,
        }
    samples = [pg_ceiling(opts.ceiling_seconds, opts.pg_clients) for _ in range(opts.runs)]
    log(
        f"PostgreSQL ceiling ({opts.pg_clients} client processes): "
        + ", ".join(f"{x:,.0f}/s" for x in samples)
    )
    single = [pg_ceiling(opts.ceiling_seconds, 1) for _ in range(opts.runs)]
    log("PostgreSQL ceiling (1 client): " + ", ".join(f"{x:,.0f}/s" for x in single))
    return {
        "commits_per_s": median(samples),
        "samples": samples,
        "single_client_commits_per_s": median(single),
        "single_client_samples": single,
        "clients": opts.pg_clients,
    }


# -- machine description -----------------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = 0.0
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
                break
    load = MachineLoad()
    time.sleep(1.0)
    idle_busy = load.busy()
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
        "busy_before_start": idle_busy,
    }
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(PG_BASE_URL, autocommit=True, connect_timeout=5) as conn:
            info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
            info["pg_settings"] = {
                k: conn.execute(f"SHOW {k}").fetchone()[0]
                for k in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
            }
            info["pg_other_sessions"] = conn.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid()"
            ).fetchone()[0]
    return info


# -- report ------------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    values: dict[str, float | None] = field(default_factory=dict)
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}"
    notes: dict[str, str] = field(default_factory=dict)


def _fmt_target(backend: str, key: str, fmt: Callable[[float], str]) -> tuple[str, str]:
    target = TARGETS.get(backend, {}).get(key)
    if target is None:
        return "", ""
    op, value = target
    return f"{'≥' if op == '>=' else '≤'} {fmt(value)}", op


def _verdict(value: float | None, backend: str, key: str) -> str:
    target = TARGETS.get(backend, {}).get(key)
    if target is None or value is None or value != value:
        return ""
    op, goal = target
    ok = value >= goal if op == ">=" else value <= goal
    return "ok" if ok else "MISS"


def build_rows(results: dict[str, Any], backends: Sequence[str]) -> list[Row]:
    def get(backend: str, *path: Any) -> Any:
        node: Any = results.get(backend)
        for p in path:
            if node is None:
                return None
            node = node.get(p) if isinstance(node, dict) else None
        return node

    rows: list[Row] = []
    e2e_runs = next((get(b, "e2e", "runs") for b in backends if get(b, "e2e")), None)
    procs_list = sorted(
        {p for b in backends for p in (get(b, "e2e", "best_by_procs") or {})}, key=int
    )
    for procs in procs_list:
        row = Row(f"e2e_{procs}", f"e2e {e2e_runs:,} no-op runs, {procs} worker process(es)")
        for b in backends:
            best = (get(b, "e2e", "best_by_procs") or {}).get(procs)
            if best:
                row.values[b] = best["runs_per_s"]
                row.notes[b] = f"c={best['concurrency']} batch={best['claim_batch']}"
        rows.append(row)
    row = Row("submit", "enqueue one at a time (flow.submit), runs/s")
    for b in backends:
        row.values[b] = get(b, "enqueue", "submit_per_s")
    rows.append(row)
    row = Row("bulk", "enqueue in bulk (store.create_runs), runs/s")
    for b in backends:
        row.values[b] = get(b, "enqueue", "bulk_per_s")
        if get(b, "enqueue"):
            row.notes[b] = f"batches of {get(b, 'enqueue', 'bulk_batch')}"
    rows.append(row)
    ms = lambda v: f"{v:.1f}"  # noqa: E731
    for key, label in (("p50", "enqueue→start latency p50, ms"), ("p99", "… p99, ms")):
        row = Row(f"latency_{key}", label, fmt=ms)
        for b in backends:
            row.values[b] = get(b, "latency", key)
        rows.append(row)
    step_concs = sorted(
        {int(k[1:]) for b in backends for k in (get(b, "steps") or {}) if k.startswith("c")}
    )
    for conc in step_concs:
        row = Row(
            "step_ms" if conc == min(step_concs) else f"step_ms_c{conc}",
            f"step checkpoint cost, ms/step (worker concurrency {conc})",
            fmt=lambda v: f"{v:.3f}",
        )
        for b in backends:
            row.values[b] = get(b, "steps", f"c{conc}", "step_ms")
        rows.append(row)
    row = Row("ceiling", "DB ceiling: single-row INSERT commits/s")
    for b in backends:
        row.values[b] = get(b, "ceiling", "commits_per_s")
        if get(b, "ceiling"):
            row.notes[b] = f"{get(b, 'ceiling', 'clients')} client(s)"
    rows.append(row)
    row = Row("fraction", "best e2e runs/s as a fraction of the ceiling", fmt=lambda v: f"{v:.0%}")
    for b in backends:
        best, ceil = get(b, "e2e", "best", "runs_per_s"), get(b, "ceiling", "commits_per_s")
        row.values[b] = best / ceil if best and ceil else None
    rows.append(row)
    return rows


def render_table(rows: list[Row], backends: Sequence[str], markdown: bool) -> str:
    header = ["figure"]
    for b in backends:
        header += [LABEL[b], "target", ""]
    lines = []
    table = []
    for row in rows:
        cells = [row.label]
        for b in backends:
            value = row.values.get(b)
            text = "—" if value is None else row.fmt(value)
            if row.notes.get(b):
                text += f" ({row.notes[b]})"
            target, _ = _fmt_target(b, row.key, row.fmt)
            cells += [text, target, _verdict(value, b, row.key)]
        table.append(cells)
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(c for c in cells) + " |" for cells in table]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    sep = "  "
    lines.append(sep.join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines.append(sep.join("-" * w for w in widths))
    for cells in table:
        lines.append(sep.join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


def render_grid(results: dict[str, Any], backends: Sequence[str], markdown: bool) -> str:
    out = []
    for b in backends:
        grid = (results.get(b) or {}).get("e2e", {}).get("grid")
        if not grid:
            continue
        head = [
            "procs",
            "concurrency",
            "claim batch",
            "runs/s",
            "worker CPU ms/run",
            "machine busy",
        ]
        body = [
            [
                str(r["procs"]),
                str(r["concurrency"]),
                str(r["claim_batch"]),
                f"{r['runs_per_s']:,.0f}",
                f"{r['worker_cpu_ms_per_run']:.3f}",
                f"{r['machine_busy']:.0%}",
            ]
            for r in grid
        ]
        out.append(f"{LABEL[b]} e2e grid (median of runs):")
        if markdown:
            out.append("")
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "|".join("---:" for _ in head) + "|")
            out += ["| " + " | ".join(r) + " |" for r in body]
        else:
            widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
            out.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
            out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body]
        best = results[b]["e2e"]["best"]
        out.append(
            f"best: {best['procs']} process(es) x concurrency {best['concurrency']}, "
            f"LEGATO_CLAIM_BATCH={best['claim_batch']} → {best['runs_per_s']:,.0f} runs/s"
        )
        out.append("")
    return "\n".join(out)


def write_results_md(
    path: Path, results: dict[str, Any], backends: Sequence[str], opts: argparse.Namespace
) -> None:
    m = results["machine"]
    lines = [
        "# Legato engine benchmark results",
        "",
        f"- date: {results['date']}",
        f"- command: `{results['command']}`",
        f"- legato measured: {results['legato']}",
        f"- machine: {m['cpus']} CPU cores ({m['cpu_model']}), {m['memory_gb']} GB RAM, "
        f"{m['platform']}",
        f"- Python {m['python']}, SQLite {m['sqlite']}, PostgreSQL {m.get('postgres', '?')} "
        f"({', '.join(f'{k}={v}' for k, v in (m.get('pg_settings') or {}).items())})",
        f"- repetitions per figure: {opts.runs} (the median is shown)",
        f"- load before start: loadavg {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}; "
        f"{m['busy_before_start']:.0%} of the CPU busy during a 1 s idle probe; "
        f"{m.get('pg_other_sessions', '?')} other PostgreSQL client sessions",
        f"- load after: loadavg {', '.join(f'{x:.2f}' for x in results['loadavg_at_end'])}",
    ]
    if results.get("noisy"):
        lines.append(
            "- **The machine was not idle when this started** (the load average or the idle "
            "probe above; other processes share the 2 cores and the PostgreSQL server): figures "
            "are noisy and pessimistic; compare repeated runs, not single digits."
        )
    lines += [
        "",
        "## Summary",
        "",
        render_table(build_rows(results, backends), backends, markdown=True),
        "",
        "## End-to-end grid",
        "",
        render_grid(results, backends, markdown=True),
        "## Details",
        "",
    ]
    for b in backends:
        r = results.get(b) or {}
        if "latency" in r:
            lat = r["latency"]
            lines.append(
                f"- {LABEL[b]} latency ({lat['runs']} runs, gap {lat['gap_ms']:.0f} ms, worker "
                f"concurrency {lat['concurrency']}): start p50 {lat['p50']:.1f} / p90 "
                f"{lat['p90']:.1f} / p99 {lat['p99']:.1f} / max {lat['max']:.0f} ms; "
                f"finish p50 {lat['finish_p50']:.1f} / p99 {lat['finish_p99']:.1f} ms"
            )
        if "steps" in r:
            for k, v in r["steps"].items():
                if k.startswith("c"):
                    lines.append(
                        f"- {LABEL[b]} steps, concurrency {k[1:]}: {v['per_run_ms_0_steps']:.2f} "
                        f"ms/run with 0 steps, {v['per_run_ms_n_steps']:.2f} ms/run with "
                        f"{r['steps']['steps']} → {v['step_ms']:.3f} ms/step (from median run "
                        f"durations: {v['step_ms_from_durations']:.3f} ms/step)"
                    )
        if "ceiling" in r:
            c = r["ceiling"]
            extra = (
                f"; BEGIN IMMEDIATE + INSERT + COMMIT: {c['explicit_tx_commits_per_s']:,.0f}/s"
                if b == "sqlite"
                else f"; 1 client: {c['single_client_commits_per_s']:,.0f}/s"
            )
            lines.append(
                f"- {LABEL[b]} ceiling: {c['commits_per_s']:,.0f} commits/s with "
                f"{c['clients']} client(s){extra}"
            )
    path.write_text("\n".join(lines) + "\n")


# -- main --------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


SECTIONS = ("e2e", "enqueue", "latency", "steps", "ceiling")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--runs", type=int, default=1, help="repetitions of each figure (median shown)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the script")
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    p.add_argument("--e2e-runs", type=int, help="runs per e2e measurement [10000; quick 1000]")
    p.add_argument("--procs", type=int_list, help="worker processes to try [1,2]")
    p.add_argument("--concurrency", type=int_list, help="worker concurrency to try [8,16,32]")
    p.add_argument(
        "--claim-batch",
        type=int_list,
        help="LEGATO_CLAIM_BATCH values to try [4,32]; "
        "values above the concurrency are capped to it",
    )
    p.add_argument("--submit-runs", type=int, help="runs submitted one at a time [3000; quick 300]")
    p.add_argument("--bulk-runs", type=int, help="runs created in bulk [30000; quick 3000]")
    p.add_argument("--bulk-batch", type=int, default=1000, help="runs per create_runs call")
    p.add_argument("--latency-runs", type=int, help="runs of the latency test [500; quick 100]")
    p.add_argument("--latency-gap", type=float, default=0.01, help="seconds between submits")
    p.add_argument("--latency-concurrency", type=int, default=8)
    p.add_argument("--step-runs", type=int, help="runs per phase of the step test [300; quick 40]")
    p.add_argument("--steps", type=int, default=20, help="no-op steps in the heavy flow")
    p.add_argument(
        "--step-concurrency", type=int_list, help="worker concurrency of the step test [1,8]"
    )
    p.add_argument("--ceiling-seconds", type=float, help="duration of a ceiling test [3; quick 1]")
    p.add_argument("--pg-clients", type=int, default=8, help="client processes, PG ceiling")
    p.add_argument("--results", type=Path, help="markdown results file [benchmarks/results.md]")
    p.add_argument("--no-results", action="store_true", help="do not write the results file")
    p.add_argument("--json", type=Path, help="also write every measurement as JSON here")
    p.add_argument(
        "--snapshot",
        metavar="REV",
        help="measure legato as of this git revision (e.g. HEAD), not the working tree",
    )
    p.add_argument(
        "--noisy",
        choices=["auto", "yes", "no"],
        default="auto",
        help="say in results.md that other processes were active (auto: from the load probe)",
    )
    opts = p.parse_args(argv)
    q = opts.quick
    defaults = {
        "e2e_runs": 1000 if q else 10_000,
        "procs": [1, 2],
        "concurrency": [8] if q else [8, 16, 32],
        "claim_batch": [32] if q else [4, 32],
        "submit_runs": 300 if q else 3000,
        "bulk_runs": 3000 if q else 30_000,
        "latency_runs": 100 if q else 500,
        "step_runs": 40 if q else 300,
        "step_concurrency": [1] if q else [1, 8],
        "ceiling_seconds": 1.0 if q else 3.0,
    }
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.sections = [s.strip() for s in opts.only.split(",") if s.strip()]
    unknown = set(opts.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if opts.results is None and not opts.no_results and not q:
        opts.results = HERE / "results.md"
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    if opts.snapshot:
        reexec_in_snapshot(opts.snapshot, Path(__file__).resolve(), argv)
    backends = list(BACKENDS) if opts.backend == "both" else [opts.backend]
    logdir = Path(tempfile.mkdtemp(prefix="legato-bench-logs-"))
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python benchmarks/bench_engine.py", *argv]),
        "legato": legato_source(),
        "machine": machine_description(),
    }
    m = results["machine"]
    log(f"measuring legato: {results['legato']}")
    log(
        f"{m['cpus']} cores ({m['cpu_model']}), loadavg {m['loadavg_at_start']}, "
        f"{m['busy_before_start']:.0%} busy before start; worker logs in {logdir}"
    )
    runners: dict[str, Callable[[str], dict[str, Any]]] = {
        "e2e": lambda b: bench_e2e(b, opts, logdir),
        "enqueue": lambda b: bench_enqueue(b, opts),
        "latency": lambda b: bench_latency(b, opts, logdir),
        "steps": lambda b: bench_steps(b, opts, logdir),
        "ceiling": lambda b: bench_ceiling(b, opts),
    }
    failed = False
    for backend in backends:
        results[backend] = {}
        for section in SECTIONS:
            if section not in opts.sections:
                continue
            log(f"== {LABEL[backend]}: {section}")
            try:
                results[backend][section] = runners[section](backend)
            except Exception as exc:  # keep going: one failure should not hide the rest
                failed = True
                log(f"{LABEL[backend]} {section} FAILED: {type(exc).__name__}: {exc}")
                results[backend][f"{section}_error"] = f"{type(exc).__name__}: {exc}"
    results["loadavg_at_end"] = os.getloadavg()
    noisy = {
        "yes": True,
        "no": False,
        "auto": m["busy_before_start"] > 0.10 or max(m["loadavg_at_start"]) > 0.5,
    }[opts.noisy]
    results["noisy"] = noisy

    print()
    print(render_grid(results, backends, markdown=False))
    print(render_table(build_rows(results, backends), backends, markdown=False))
    print()
    print(
        f"Machine: {m['cpus']} cores; "
        + (
            "measured while other processes were active: figures are noisy."
            if noisy
            else "machine looked idle at start."
        )
    )
    if opts.results:
        write_results_md(opts.results, results, backends, opts)
        print(f"results written to {opts.results}")
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"JSON written to {opts.json}")
    if not failed:
        shutil.rmtree(logdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
