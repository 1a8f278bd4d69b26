"""Profile the worker's hot path on the end-to-end no-op benchmark.

The worker runs *in this process* (``legato.Worker``, the same code ``legato worker`` runs) on a
fresh database holding N no-op runs enqueued in bulk; it is stopped once every run finished.
Three passes, each on its own fresh database, because every instrument distorts the timing:

``counters``
    No profiler. Counts, per run: store calls, SQL statements (and commits), claims and the
    runs each returned, claim-loop wake-ups, plus the time spent waiting for the SQLite write
    lock (``BEGIN IMMEDIATE``) or for a pooled PostgreSQL connection; the CPU of each thread;
    and on PostgreSQL what the server sessions were doing (``pg_stat_activity`` sampled).
``sample``
    A wall-clock sampler (``sys._current_frames()`` every 2 ms): where each thread *is*,
    including waits (locks, sockets, sleeps) that a deterministic profiler does not show.
    Collapsed stacks are written for flame graphs (``*.collapsed``).
``cprofile``
    ``cProfile`` in *every* thread (``threading.setprofile`` installs one profiler per
    thread; they are merged): Python CPU time by function. Saved as ``*.prof`` (open with
    ``python -m pstats`` or snakeview).

py-spy is not available and pyinstrument samples only the thread that started it, while
Legato runs flows in a thread pool: hence these home-made instruments.

Usage::

    python benchmarks/profile_engine.py --backend sqlite --runs 10000 --concurrency 8
    python benchmarks/profile_engine.py --backend postgres --passes counters,sample
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import functools
import io
import os
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import (  # noqa: E402
    LABEL,
    Database,
    bulk_enqueue,
    fresh_database,
    legato_source,
    reexec_in_snapshot,
    span,
)
from bench_flows import make_app  # noqa: E402

from legato.config import Settings  # noqa: E402
from legato.worker import Worker  # noqa: E402

STORE_METHODS = (
    "claim",
    "finish_run",
    "write_outcomes",
    "heartbeat",
    "requeue_expired",
    "step_started",
    "step_finished",
    "write_logs",
    "get_steps",
    "due_schedules",
    "next_schedule_due",
    "now_ms",
    "create_run",
)
PRIMITIVES = ("_read", "_write", "_write_returning", "_write_many")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.__stderr__, flush=True)


class Counter:
    """Thread-safe call counters with cumulative wall time."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.seconds: collections.Counter[str] = collections.Counter()
        self.cpu: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def add(self, key: str, seconds: float = 0.0, n: int = 1, cpu: float = 0.0) -> None:
        with self.lock:
            self.calls[key] += n
            self.seconds[key] += seconds
            self.cpu[key] += cpu


class CountingEvent(threading.Event):
    """The worker's ``_slot_freed`` event, counting the claim loop's waits and wake-ups."""

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    def wait(self, timeout: float | None = None) -> bool:
        start = time.perf_counter()
        woke = super().wait(timeout)
        self.counter.add(
            "slot_wait.woken" if woke else "slot_wait.timeout", time.perf_counter() - start
        )
        return woke


def instrument_store(store: Any, counter: Counter, claim_sizes: collections.Counter[int]) -> None:
    """Wrap the store's methods (on the instance only) to count calls and time waits."""

    def wrap(name: str, fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                counter.add(key, time.perf_counter() - start, cpu=time.thread_time() - cpu)

        return wrapper

    for name in STORE_METHODS:
        if hasattr(store, name):
            setattr(store, name, wrap(name, getattr(store, name), f"store.{name}"))
    for name in PRIMITIVES:
        setattr(store, name, wrap(name, getattr(store, name), f"primitive.{name}"))

    claim = store.claim

    def counting_claim(*args: Any, **kwargs: Any) -> Any:
        rows = claim(*args, **kwargs)
        claim_sizes[len(rows)] += 1
        return rows

    store.claim = counting_claim

    if hasattr(store, "write_outcomes"):
        write_outcomes = store.write_outcomes

        def counting_outcomes(outcomes: Any) -> Any:
            counter.add("outcomes.rows", n=len(outcomes))
            return write_outcomes(outcomes)

        store.write_outcomes = counting_outcomes

    listen = store.listen

    def counting_listen(timeout: float) -> Iterator[str]:
        start = time.perf_counter()
        got = False
        for payload in listen(timeout):
            got = True
            yield payload
        counter.add("listen.woken" if got else "listen.timeout", time.perf_counter() - start)

    store.listen = counting_listen

    if store.name == "sqlite":
        original_tx = store._transaction
        conn_of = store._conn

        @contextlib.contextmanager
        def timed_tx() -> Iterator[Any]:
            start = time.perf_counter()
            cm = original_tx()
            tx = cm.__enter__()  # BEGIN IMMEDIATE: waits for the write lock
            counter.add("sqlite.begin_immediate_wait", time.perf_counter() - start)
            held = time.perf_counter()
            try:
                yield tx
            except BaseException:
                if not cm.__exit__(*sys.exc_info()):
                    raise
            else:
                cm.__exit__(None, None, None)
            finally:
                counter.add("sqlite.write_lock_held", time.perf_counter() - held)

        store._transaction = timed_tx
        traced: set[int] = set()

        def traced_conn() -> Any:
            conn = conn_of()
            if id(conn) not in traced:
                traced.add(id(conn))
                last: list[str] = [""]

                def trace(sql: str, last: list[str] = last) -> None:
                    # SQLite traces each trigger program with its parent statement's text:
                    # a repeat of the previous text is a trigger firing, not a statement.
                    if sql == last[0]:
                        counter.add("sqlite.trigger_traces (2 per firing)")
                        return
                    last[0] = sql
                    counter.add("sql." + sql.lstrip().split(None, 1)[0].upper())

                conn.set_trace_callback(trace)
            return conn

        store._conn = traced_conn
    else:
        original_conn = store._connection

        @contextlib.contextmanager
        def timed_conn() -> Iterator[Any]:
            start = time.perf_counter()
            with original_conn() as conn:
                counter.add("pg.pool_wait", time.perf_counter() - start)
                yield conn

        store._connection = timed_conn


def instrument_psycopg(counter: Counter) -> Callable[[], None]:
    """Count statements sent by psycopg (class-level patch, undone by the returned callable)."""
    import psycopg

    # Connection.execute goes through Cursor.execute: patch the cursor only.
    originals = {psycopg.Cursor: psycopg.Cursor.execute}
    original_many = psycopg.Cursor.executemany

    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            text = query if isinstance(query, str) else str(query)
            counter.add("sql." + text.lstrip().split(None, 1)[0].upper())
            return orig(self, query, *args, **kwargs)

        return execute

    def executemany(self: Any, query: Any, params_seq: Any, *args: Any, **kwargs: Any) -> Any:
        params_seq = list(params_seq)
        counter.add("sql.EXECUTEMANY(rows)", n=len(params_seq))
        return original_many(self, query, params_seq, *args, **kwargs)

    for cls in originals:
        cls.execute = make(originals[cls])  # type: ignore[method-assign]
    psycopg.Cursor.executemany = executemany  # type: ignore[method-assign]

    def undo() -> None:
        for cls, orig in originals.items():
            cls.execute = orig  # type: ignore[method-assign]
        psycopg.Cursor.executemany = original_many  # type: ignore[method-assign]

    return undo


class PgActivitySampler(threading.Thread):
    """Samples what this process's PostgreSQL sessions are doing, server side."""

    def __init__(self, app_name: str, interval: float = 0.02) -> None:
        super().__init__(name="bench-pg-activity", daemon=True)
        self.app_name = app_name
        self.interval = interval
        self.states: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psycopg
        from bench_engine import PG_BASE_URL

        with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
            while not self._stop_event.wait(self.interval):
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity "
                    "WHERE application_name = %s",
                    (self.app_name,),
                ).fetchall()
                self.samples += 1
                for state, wtype, wevent, query in rows:
                    if state == "active":
                        what = (query or "").split(None, 2)
                        verb = " ".join(what[:2]) if what else "?"
                        key = f"active [{wtype}:{wevent}]" if wtype else "active [on CPU]"
                        self.states[f"{key} {verb[:30]}"] += 1
                    else:
                        self.states[f"{state} [{wtype}:{wevent}]"] += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


class StackSampler(threading.Thread):
    """Wall-clock sampling of every thread's Python stack."""

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.interval = interval
        self.stacks: collections.Counter[tuple[str, str]] = collections.Counter()
        self.leaves: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.totals: collections.Counter[str] = collections.Counter()
        self._stop_event = threading.Event()

    @staticmethod
    def group(name: str) -> str:
        if name.startswith("legato-run"):
            return "run threads"
        if name == "MainThread":
            return "claim loop (main)"
        if name.startswith("legato-bench") and ("-worker-" in name or name.endswith("-scheduler")):
            return "psycopg pool threads"
        return name.split("-", 1)[0] if name.startswith("Thread") else name

    @staticmethod
    def frame_label(frame: Any) -> str:
        code = frame.f_code
        path = code.co_filename
        if "/legato/" in path:
            path = "legato/" + path.split("/legato/", 1)[1]
        elif "site-packages/" in path:
            path = path.split("site-packages/", 1)[1]
        else:
            path = os.path.basename(path)
        return f"{path}:{code.co_name}"

    def run(self) -> None:
        me = threading.get_ident()
        while not self._stop_event.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                name = names.get(tid, "?")
                if name.startswith("bench-") or name.startswith("pydevd"):
                    continue
                group = self.group(name)
                chain = []
                f = frame
                while f is not None:
                    chain.append(self.frame_label(f))
                    f = f.f_back
                chain.reverse()
                leaf = chain[-1]
                legato_frames = [c for c in chain if c.startswith("legato/")]
                where = legato_frames[-1] if legato_frames else chain[0]
                key = where if where == leaf else f"{where} → {leaf}"
                self.leaves[group][key] += 1
                self.totals[group] += 1
                self.stacks[(group, ";".join(chain))] += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def report(self, top: int) -> str:
        out = []
        for group, total in self.totals.most_common():
            out.append(f"  {group}: {total} samples")
            for key, n in self.leaves[group].most_common(top):
                out.append(f"    {n / total:6.1%}  {key}")
        return "\n".join(out)

    def write_collapsed(self, path: Path) -> None:
        with open(path, "w") as fh:
            for (group, chain), n in self.stacks.most_common():
                fh.write(f"{group};{chain} {n}\n")


class ThreadProfiles:
    """One cProfile per thread (installed with ``threading.setprofile``), merged per thread
    group (claim loop, run threads, ...) and overall."""

    def __init__(self) -> None:
        self.profiles: list[tuple[str, cProfile.Profile]] = []
        self.lock = threading.Lock()

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        prof = cProfile.Profile()
        group = StackSampler.group(threading.current_thread().name)
        with self.lock:
            self.profiles.append((group, prof))
        prof.enable()

    def start(self) -> None:
        threading.setprofile(self._hook)
        main = cProfile.Profile()
        self.profiles.append((StackSampler.group("MainThread"), main))
        main.enable()

    def stop(self) -> dict[str, pstats.Stats]:
        """Merged stats: ``"all"`` and one entry per thread group."""
        threading.setprofile(None)  # type: ignore[arg-type]
        merged: dict[str, pstats.Stats] = {}
        for group, prof in self.profiles:
            prof.disable()
            prof.create_stats()
            if not getattr(prof, "stats", None) or group.startswith("bench"):
                continue
            for key in ("all", group):
                if key in merged:
                    merged[key].add(prof)
                else:
                    merged[key] = pstats.Stats(prof)
        return merged


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, grouped like the sampler."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: collections.Counter[str] = collections.Counter()
    for t in threading.enumerate():
        if t.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[StackSampler.group(t.name)] += (int(fields[11]) + int(fields[12])) / ticks
    return dict(out)


def run_pass(backend: str, mode: str, opts: argparse.Namespace, outdir: Path) -> dict[str, Any]:
    with fresh_database(backend) as db:
        url = db.url
        app_name = f"legato_prof_{os.getpid()}"
        if backend == "postgres":
            url += f"&application_name={app_name}"
        seed = make_app(db.url)
        seed.register()
        bulk_enqueue(seed.store, "noop", opts.runs)
        seed.close()

        app = make_app(url)
        settings = Settings.from_env(claim_batch=opts.claim_batch)
        worker = Worker(app, concurrency=opts.concurrency, settings=settings)
        counter = Counter()
        claim_sizes: collections.Counter[int] = collections.Counter()
        undo_pg: Callable[[], None] | None = None
        if mode == "counters":
            instrument_store(worker.store, counter, claim_sizes)
            worker._slot_freed = CountingEvent(counter)
            if backend == "postgres":
                undo_pg = instrument_psycopg(counter)
        activity = PgActivitySampler(app_name) if backend == "postgres" else None
        sampler = StackSampler(opts.sample_interval) if mode == "sample" else None
        profiles = ThreadProfiles() if mode == "cprofile" else None

        done_at: list[float] = []
        cpu_at_done: dict[str, float] = {}

        def monitor() -> None:
            worker.started.wait(60)
            probe = Database(backend, db.url, schema=db.schema, path=db.path)
            while True:
                n = probe.scalar(
                    "SELECT COUNT(*) FROM runs WHERE status IN ('succeeded', 'failed')"
                )
                if n >= opts.runs:
                    break
                time.sleep(0.05)
            probe.close()
            done_at.append(time.perf_counter())
            cpu_at_done.update(thread_cpu())
            cpu_at_done["process"] = time.process_time()
            worker.stop()

        threading.Thread(target=monitor, name="bench-monitor", daemon=True).start()
        if activity is not None:
            activity.start()
        if sampler is not None:
            sampler.start()
        if profiles is not None:
            profiles.start()
        cpu_before = thread_cpu()
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        try:
            worker.run(install_signals=False)
        finally:
            stats = profiles.stop() if profiles is not None else None
            if sampler is not None:
                sampler.stop()
            if activity is not None:
                activity.stop()
            if undo_pg is not None:
                undo_pg()
            app.close()
        wall = (done_at[0] if done_at else time.perf_counter()) - wall0
        cpu = cpu_at_done.get("process", time.process_time()) - cpu0
        s = span(db)

    n = opts.runs
    result: dict[str, Any] = {
        "mode": mode,
        "runs_per_s_db": s["runs"] / (s["elapsed_ms"] / 1000),
        "wall_s": wall,
        "process_cpu_ms_per_run": 1000 * cpu / n,
        "cpu_utilisation": cpu / wall,
        "thread_cpu_s": {
            k: v - cpu_before.get(k, 0.0) for k, v in cpu_at_done.items() if k != "process"
        },
    }
    lines = [
        f"--- {LABEL[backend]} pass '{mode}': {result['runs_per_s_db']:,.0f} runs/s (DB span), "
        f"process CPU {result['process_cpu_ms_per_run']:.3f} ms/run, "
        f"{result['cpu_utilisation']:.0%} of one core",
        "  CPU seconds by thread: "
        + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(result["thread_cpu_s"].items(), key=lambda kv: -kv[1])
        ),
    ]
    if mode == "counters":
        lines.append(
            "  per run: calls, wall ms (summed over threads), CPU ms of the calling thread:"
        )
        for key in sorted(counter.calls):
            calls, secs, cpu = counter.calls[key], counter.seconds[key], counter.cpu[key]
            lines.append(
                f"    {key:38s} {calls / n:7.3f} calls/run  {1000 * secs / n:7.3f} ms/run"
                + (f" ({1e6 * secs / calls:8.1f} µs/call)" if secs else "")
                + (f"  CPU {1000 * cpu / n:6.3f} ms/run" if cpu else "")
            )
        claims = sum(claim_sizes.values())
        claimed = sum(k * v for k, v in claim_sizes.items())
        lines.append(
            f"  claims: {claims} statements for {claimed} runs = {claimed / max(1, claims):.2f} "
            f"runs/claim; sizes {dict(sorted(claim_sizes.items()))}"
        )
        result["counters"] = {k: [counter.calls[k], counter.seconds[k]] for k in counter.calls}
        result["claim_sizes"] = dict(claim_sizes)
    if activity is not None and activity.samples:
        lines.append(
            f"  PostgreSQL sessions of this worker ({activity.samples} samples every "
            f"{activity.interval * 1000:.0f} ms; average sessions in each state):"
        )
        for key, count in activity.states.most_common(12):
            lines.append(f"    {count / activity.samples:6.2f}  {key}")
        result["pg_activity"] = {k: v / activity.samples for k, v in activity.states.items()}
    if sampler is not None:
        lines.append(f"  wall-clock samples every {sampler.interval * 1000:.0f} ms, by thread:")
        lines.append(sampler.report(opts.top))
        path = outdir / f"{backend}-c{opts.concurrency}.collapsed"
        sampler.write_collapsed(path)
        lines.append(f"  collapsed stacks: {path}")
    if stats is not None:
        path = outdir / f"{backend}-c{opts.concurrency}.prof"
        stats["all"].dump_stats(str(path))
        views = [("all", "tottime"), ("all", "cumulative")]
        views += [(g, "tottime") for g in ("claim loop (main)", "run threads") if g in stats]
        for group, sort in views:
            buf = io.StringIO()
            stats[group].stream = buf  # type: ignore[attr-defined]
            stats[group].sort_stats(sort).print_stats(opts.top)
            text = buf.getvalue()
            body = text[text.find("   ncalls") :] if "   ncalls" in text else text
            lines.append(f"  cProfile, {group} threads, top {opts.top} by {sort}:")
            lines += ["    " + ln for ln in body.rstrip().splitlines()]
        lines.append(f"  profile saved: {path}")
    result["report"] = "\n".join(lines)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--claim-batch", type=int, default=32)
    p.add_argument("--passes", default="counters,sample,cprofile")
    p.add_argument("--sample-interval", type=float, default=0.002)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, help="where to write .prof and .collapsed files")
    p.add_argument("--snapshot", metavar="REV", help="profile legato as of this git revision")
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = p.parse_args(argv)
    if opts.snapshot:
        reexec_in_snapshot(opts.snapshot, Path(__file__).resolve(), argv)
    log(f"profiling legato: {legato_source()}")
    outdir = opts.out or Path(tempfile.mkdtemp(prefix="legato-profile-"))
    outdir.mkdir(parents=True, exist_ok=True)
    backends = ["sqlite", "postgres"] if opts.backend == "both" else [opts.backend]
    for backend in backends:
        for mode in [m.strip() for m in opts.passes.split(",") if m.strip()]:
            log(
                f"{LABEL[backend]}: pass {mode} ({opts.runs} runs, concurrency "
                f"{opts.concurrency}, claim batch {opts.claim_batch})"
            )
            result = run_pass(backend, mode, opts, outdir)
            print(result["report"], flush=True)
            print(flush=True)
    print(f"files in {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
