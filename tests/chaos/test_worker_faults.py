"""Worker faults on SQLite and PostgreSQL: kill -9 storms with cancels, a poison run beside
ordinary ones, schedulers killed while a cron fires.

Workers are real processes, killed with ``SIGKILL`` and started again by the test; the checks
read the database and the flows' marker files.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from legato import App
from legato.store import TERMINAL, Store, open_store
from legato.store.records import RunFilter
from tests.acceptance.support import freeze_between_transactions
from tests.chaos.checks import (
    assert_ended_once,
    assert_no_infrastructure_failure,
    outcomes,
    report,
    steps_rerun,
    wait_all_finished,
)
from tests.chaos.conftest import Workers, scaled
from tests.helpers import WorkerProcess, wait_for

pytestmark = pytest.mark.chaos


def serving(store: Store, count: int) -> Callable[[], bool]:
    def check() -> bool:
        return len([w for w in store.list_workers(60_000) if w["alive"]]) >= count

    return check


def started_steps(marker: Path) -> int:
    text = marker.read_text() if marker.exists() else ""
    return text.count("start ")


@pytest.mark.timeout(300)
def test_cancels_are_honoured_during_a_storm_of_worker_kills(
    db_url: str, workers: Callable[..., Workers], tmp_path: Path
) -> None:
    runs, cancels, kills = scaled(120), scaled(50), scaled(10)
    directory = tmp_path / "markers"
    directory.mkdir()
    group = workers(db_url)
    pool = [group.start(concurrency=4) for _ in range(4)]
    store = open_store(db_url)
    wait_for(serving(store, 4), timeout=60, message="four workers serving")
    app = App(db_url)
    # 20 steps of 50 ms: a run picked early (5 steps done at most) has its next boundaries
    # well after its worker hears of the request (at its next heartbeat, 0.4 s, or at once
    # through NOTIFY on PostgreSQL); a cancel at the very end would rightly find none.
    params = {"directory": str(directory), "steps": 20, "pause": 0.05}
    submitted: list[str] = []
    stop_submitting = threading.Event()

    def submit_all() -> None:  # a concurrent submitter, while the workers die and start
        for i in range(runs):
            if stop_submitting.is_set():
                return
            submitted.append(app.submit("slow_chain", params, idempotency_key=f"k{i}").id)
            time.sleep(0.01)

    submitter = threading.Thread(target=submit_all, daemon=True)
    submitter.start()
    rng = random.Random(11)
    # Besides the kills: one worker frozen (SIGSTOP) past its lease, then woken up — its late
    # writes must be refused — and one stopped with SIGTERM, which drains and exits 0.
    faults = ["kill"] * kills + ["freeze", "term"]
    rng.shuffle(faults)
    cancelled: set[str] = set()
    killed = 0
    frozen: list[WorkerProcess] = []
    drained: list[WorkerProcess] = []
    deadline = time.monotonic() + 120
    while (len(cancelled) < cancels or faults) and time.monotonic() < deadline:
        running = [
            r["id"]
            for r in store.list_runs(RunFilter(status="running", limit=200))
            if r["id"] not in cancelled and started_steps(directory / r["id"]) <= 5
        ]
        for run_id in rng.sample(running, min(len(running), 3)):
            if len(cancelled) < cancels and run_id not in cancelled:
                assert store.cancel_run(run_id) in ("running", "cancelled")
                cancelled.add(run_id)
        # Only a worker that serves already: one still starting has no SIGTERM handler yet.
        serving_pids = {w["pid"] for w in store.list_workers(60_000) if w["alive"]}
        victims = [w for w in group.alive if w not in frozen + drained and w.pid in serving_pids]
        if faults and victims and rng.random() < 0.5:
            fault = faults.pop()
            victim = rng.choice(victims)
            if fault == "kill":
                victim.kill()
                killed += 1
            elif fault == "freeze":
                freeze_between_transactions(victim, db_url)
                frozen.append(victim)
                threading.Timer(3.0, victim.signal, args=(signal.SIGCONT,)).start()
            else:
                victim.signal(signal.SIGTERM)
                drained.append(victim)
            group.start(concurrency=4)
        time.sleep(0.15)
    submitter.join(timeout=60)
    assert len(cancelled) == cancels and not faults, (len(cancelled), faults)

    wait_all_finished(store, submitted, timeout=120)
    rows = outcomes(store, submitted)
    wrong = {r: rows[r]["status"] for r in cancelled if rows[r]["status"] != "cancelled"}
    assert not wrong, f"cancel requests not honoured: {wrong}"
    others = Counter(row["status"] for r, row in rows.items() if r not in cancelled)
    assert set(others) <= {"succeeded"}, {
        r: (row["status"], row["error"])
        for r, row in rows.items()
        if r not in cancelled and row["status"] != "succeeded"
    }
    assert_ended_once(store, rows)
    assert_no_infrastructure_failure(rows)
    assert steps_rerun(store, directory, submitted) == []
    assert store.list_runs(RunFilter(status="running", limit=10)) == []
    assert [w.proc.wait(timeout=30) for w in drained] == [0]  # SIGTERM: drained, exit 0
    assert [w.proc.poll() for w in frozen] == [None]  # woke up and went on serving
    report(
        f"cancels during a kill storm ({store.name})",
        {
            "runs": len(submitted),
            "workers": len(pool),
            "kills": killed,
            "frozen_past_lease": len(frozen),
            "sigterm_drains": len(drained),
            "cancels": len(cancelled),
            "cancelled": sum(1 for r in cancelled if rows[r]["status"] == "cancelled"),
            "succeeded": others["succeeded"],
            "recovered_runs": sum(1 for row in rows.values() if row["recoveries"]),
        },
    )
    app.close()
    store.close()


@pytest.mark.timeout(240)
def test_only_the_poison_run_fails_as_poison(
    db_url: str, workers: Callable[..., Workers], tmp_path: Path
) -> None:
    """One worker, restarted whenever it dies; a run that kills its process beside ordinary
    runs claimed with it. Only the poison run fails, after ``max_recoveries`` (2) recoveries."""
    directory = tmp_path / "markers"
    directory.mkdir()
    group = workers(db_url)
    store = open_store(db_url)
    group.start(concurrency=4)
    wait_for(serving(store, 1), timeout=60, message="the worker serving")
    app = App(db_url)
    poison = app.submit("poison", {"directory": str(directory)}).id
    ordinary = [
        app.submit("ordinary", {"directory": str(directory), "pause": 0.2}).id for _ in range(12)
    ]
    deaths = 0
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        if not group.alive:
            deaths += 1
            group.start(concurrency=4)
        if all(store.get_run_status(r) in TERMINAL for r in [poison, *ordinary]):
            break
        time.sleep(0.1)
    rows = outcomes(store, [poison, *ordinary])
    assert rows[poison]["status"] == "failed", rows[poison]
    assert rows[poison]["error"].startswith("PoisonRun:"), rows[poison]["error"]
    assert {r: rows[r]["status"] for r in ordinary} == dict.fromkeys(ordinary, "succeeded")
    starts = (directory / "poison-starts").read_text().split()
    assert len(starts) == 3  # killed its worker 3 times: max_recoveries=2 recoveries, then failed
    assert_ended_once(store, rows)
    report(
        f"a poison run beside ordinary runs ({store.name})",
        {
            "ordinary_runs": len(ordinary),
            "worker_deaths": deaths,
            "poison_starts": len(starts),
            "ordinary_succeeded": sum(1 for r in ordinary if rows[r]["status"] == "succeeded"),
            "ordinary_recovered": sum(1 for r in ordinary if rows[r]["recoveries"]),
        },
    )
    app.close()
    store.close()


@pytest.mark.timeout(180)
def test_a_cron_fires_once_per_time_while_its_schedulers_are_killed(
    db_url: str, workers: Callable[..., Workers]
) -> None:
    group = workers(db_url, {"LEGATO_SCHEDULER_SECONDS": "0.2"})
    for _ in range(3):
        group.start(concurrency=2, app="tests/flows/ticking.py")
    store = open_store(db_url)
    wait_for(serving(store, 3), timeout=60, message="three schedulers serving")
    rng = random.Random(5)
    kills = scaled(8)
    for _ in range(kills):
        time.sleep(rng.uniform(0.3, 1.0))
        rng.choice(group.alive).kill()
        group.start(concurrency=2, app="tests/flows/ticking.py")
    time.sleep(1.5)
    for worker in group.alive:
        worker.terminate()
    rows = store.list_runs(RunFilter(flow="tick", limit=10_000))
    fires = Counter(r["scheduled_for"] for r in rows)
    assert fires, "the schedule never fired"
    assert max(fires.values()) == 1, "a fire time created more than one run"
    times = sorted(fires)
    span = (times[-1] - times[0]) / 1000
    assert len(times) >= span * 0.5, f"{len(times)} fires over {span:.0f}s"
    report(
        f"cron fires while schedulers are killed ({store.name})",
        {"scheduler_kills": kills, "fires": len(times), "span_s": f"{span:.0f}", "duplicates": 0},
    )
    store.close()
