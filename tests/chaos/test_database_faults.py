"""Database faults on a private PostgreSQL server: restarts, terminated sessions, a frozen session.

While two worker processes drain runs that a submitter keeps adding, the server is restarted
(``fast`` and ``immediate``) and every Legato session is terminated, round after round. Every
acknowledged run must end ``succeeded`` exactly once, soon after the last fault, none failed
from an infrastructure error, none left ``running``, no completed step run again, and the
workers still alive.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from legato import App
from legato.errors import DatabaseUnavailable
from legato.store import NewRun, open_store
from legato.store.records import RunFilter
from tests.chaos.checks import (
    assert_ended_once,
    assert_no_infrastructure_failure,
    executions,
    outcomes,
    report,
    steps_rerun,
    through_faults,
    wait_all_finished,
)
from tests.chaos.conftest import Workers, scaled
from tests.chaos.postgres_server import PrivateServer
from tests.helpers import ROOT, cli_env, in_process_worker, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]


def fault_plan(terminations: int) -> list[str]:
    """Three restarts (fast, immediate, and fast with the server down for longer than the
    lease) with the termination rounds spread between."""
    plan: list[str] = []
    for i, restart in enumerate(("fast", "immediate", "long")):
        plan.append(restart)
        plan += ["terminate"] * (terminations // 3 + (1 if i < terminations % 3 else 0))
    return plan


@pytest.mark.timeout(420)
def test_runs_survive_postgres_restarts_and_terminated_sessions(
    private_pg: PrivateServer,
    private_pg_url: str,
    workers: Callable[..., Workers],
    tmp_path: Path,
) -> None:
    runs, terminations = scaled(300), scaled(7)
    directory = tmp_path / "markers"
    directory.mkdir()
    group = workers(private_pg_url)
    store = open_store(private_pg_url)
    pair = [group.start(concurrency=4), group.start(concurrency=4)]
    wait_for(
        lambda: len([w for w in store.list_workers(60_000) if w["alive"]]) == 2,
        timeout=60,
        message="two workers serving",
    )
    app = App(private_pg_url)
    acknowledged: list[str] = []
    refused = 0
    params = {"directory": str(directory), "steps": 3, "pause": 0.02}
    plan = fault_plan(terminations)
    spread = len(plan) * 1.0 / runs  # submits keep coming until the last fault

    def submit_all() -> None:
        nonlocal refused
        for i in range(runs):
            deadline = time.monotonic() + 60
            while True:
                try:
                    handle = app.submit("chain", params, idempotency_key=f"chaos-{i}")
                except DatabaseUnavailable:  # not acknowledged: submitted again, same key
                    refused += 1
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
                    continue
                acknowledged.append(handle.id)
                break
            time.sleep(spread)

    submitter = threading.Thread(target=submit_all, name="submitter", daemon=True)
    submitter.start()
    terminated = 0
    downtime = []
    rng = random.Random(7)
    for fault in plan:
        time.sleep(rng.uniform(0.5, 1.2))
        if fault == "terminate":
            terminated += private_pg.terminate_sessions()
        elif fault == "long":  # past the lease (2 s): every lease expires meanwhile
            downtime.append(private_pg.restart("fast", down=3.0))
        else:
            downtime.append(private_pg.restart(fault))
    last_fault = time.monotonic()
    submitter.join(timeout=120)
    assert not submitter.is_alive(), "the submitter is stuck"
    assert len(set(acknowledged)) == runs

    wait_all_finished(store, acknowledged, timeout=90)
    settled = time.monotonic() - last_fault
    rows = outcomes(store, acknowledged)
    statuses = Counter(row["status"] for row in rows.values())
    assert statuses == {"succeeded": runs}, {
        r: (row["status"], row["error"]) for r, row in rows.items() if row["status"] != "succeeded"
    }
    assert settled <= 60, f"the last runs ended {settled:.0f}s after the last fault"
    assert_ended_once(store, rows)
    assert_no_infrastructure_failure(rows)
    assert steps_rerun(store, directory, acknowledged) == []
    assert through_faults(lambda: store.list_runs(RunFilter(status="running", limit=10))) == []
    assert [w.proc.poll() for w in pair] == [None, None], group.logs()
    ran = executions(directory, acknowledged)
    report(
        "PostgreSQL restarts and terminated sessions",
        {
            "runs": runs,
            "restarts": private_pg.restarts,
            "max_downtime_s": f"{max(downtime):.1f}",
            "termination_rounds": terminations,
            "sessions_terminated": terminated,
            "submits_refused_then_retried": refused,
            "step_executions": sum(ran.values()),
            "steps_run_again_in_flight": sum(n - 1 for n in ran.values()),
            "recovered_runs": sum(1 for row in rows.values() if row["recoveries"]),
            "succeeded": statuses["succeeded"],
            "settled_s_after_last_fault": f"{settled:.1f}",
        },
    )
    app.close()
    store.close()


FROZEN_HOLDER = """
import os, signal, sys
from legato.store import open_store
store = open_store(sys.argv[1], migrate=False)
(run,) = store.claim("frozen-worker", ["frozen"], 1, 1000)
with store._transaction() as tx:  # as a worker's outcome transaction would
    tx.read(store.sql("GET_RUN") + " FOR UPDATE", {"id": run.id})
    print(run.id, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)  # frozen inside the transaction, holding the row
"""


@pytest.mark.timeout(120)
def test_a_session_frozen_in_a_transaction_does_not_block_recovery(
    pg_url: str, workers: Callable[..., Workers], tmp_path: Path
) -> None:
    """A process frozen inside a transaction that locks its run: Legato's own sessions end
    after ``idle_in_transaction_session_timeout``, and recovery then takes the run back."""
    directory = tmp_path / "markers"
    directory.mkdir()
    store = open_store(pg_url)
    run_id = "frozen" + os.urandom(8).hex()
    store.create_run(
        NewRun(
            id=run_id,
            flow="chain",
            params=f'{{"directory": "{directory}", "steps": 1, "pause": 0}}',
            queue="frozen",
        )
    )
    env = {"LEGATO_DB_IDLE_IN_TRANSACTION_TIMEOUT": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", FROZEN_HOLDER, pg_url],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(env),
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == run_id
        wait_for(lambda: _stopped(holder.pid), timeout=10, message="the holder frozen")
        began = time.monotonic()
        workers(pg_url, env).start(concurrency=2, queues=["frozen"])
        status = wait_for(
            lambda: (s := store.get_run_status(run_id)) in ("succeeded", "failed") and s,
            timeout=60,
            message="the frozen run to be recovered and finished",
        )
        took = time.monotonic() - began
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait(timeout=10)
    row = store.get_run(run_id)
    assert status == "succeeded", row
    assert row is not None and row["recoveries"] == 1
    report("a session frozen in a transaction", {"recovered_and_finished_s": f"{took:.1f}"})
    store.close()


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1].startswith("T")


@pytest.mark.timeout(120)
def test_an_outage_loses_no_log_line_and_costs_no_attempt(
    private_pg: PrivateServer, private_pg_url: str
) -> None:
    """The server is down for a while in the middle of a run: its checkpoints, log lines and
    outcome wait for it; the run ends ``succeeded`` in its first attempt with every line."""
    app = App(private_pg_url)

    @app.step
    def say(i: int) -> int:
        print(f"line {i}")
        time.sleep(0.05)
        return i

    @app.flow
    def talkative(lines: int) -> int:
        return sum(say(i) for i in range(lines))

    with in_process_worker(app, concurrency=2):
        handle = talkative.submit(40)
        wait_for(lambda: len(app.store.get_logs(handle.id)) >= 5, timeout=30)
        private_pg.stop("fast")
        time.sleep(1.5)  # the run goes on printing and reaching its checkpoints meanwhile
        private_pg.start()
        assert through_faults(lambda: handle.wait(timeout=60)) == "succeeded"
    run = handle.info()
    logs = [line["message"] for line in app.store.get_logs(handle.id)]
    messages = [m for m in logs if m.startswith("line ")]
    assert sorted(set(messages)) == sorted(f"line {i}" for i in range(40))
    # The worker's own warnings about the run, logged from its thread, are in its log too.
    assert any("retrying until the database is back" in m for m in logs), logs
    assert run["attempts"] == 1 and run["recoveries"] == 0, run
    report("a 1.5 s outage in the middle of a run", {"log_lines": len(messages), "attempts": 1})
    app.close()
