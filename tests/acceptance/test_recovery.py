"""Worker failures: SIGKILL, a worker paused past its lease (fencing), and SIGTERM shutdown.

All scenarios use ``three_steps``: step ``first`` records its worker's pid, ``second`` records
its pid then waits for ``release``, ``third`` records its pid. The side-effect files tell
which worker ran which step, and how often.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from legato.store import TERMINAL
from tests.acceptance.support import (
    Cluster,
    freeze_between_transactions,
    lines,
    parse_utc,
    show,
    submit,
)
from tests.helpers import WorkerProcess, cli_json, wait_for

pytestmark = pytest.mark.timeout(180)


def submit_three_steps(cluster: Cluster, directory: Path) -> str:
    directory.mkdir(exist_ok=True)
    return submit(cluster.db_url, "three_steps", "--param", f"directory={directory}")


def wait_in_step_two(cluster: Cluster, run_id: str, directory: Path, worker: WorkerProcess) -> None:
    """Wait until ``worker`` is inside the second step of the run."""
    wait_for(
        lambda: lines(directory / "second"), timeout=60, message=f"run {run_id} to reach step 2"
    )
    assert lines(directory / "second") == [str(worker.pid)]
    assert cluster.status(run_id) == "running"


def start_three_steps(cluster: Cluster, directory: Path, worker: WorkerProcess) -> str:
    """Submit ``three_steps`` and wait until ``worker`` is inside its second step."""
    run_id = submit_three_steps(cluster, directory)
    wait_in_step_two(cluster, run_id, directory, worker)
    return run_id


def wait_for_log(worker: WorkerProcess, text: str, timeout: float = 30) -> None:
    wait_for(lambda: text in worker.output(), timeout=timeout, message=f"{text!r} in worker log")


def nothing_running(db_url: str) -> None:
    assert cli_json(["runs", "list", "--status", "running"], db_url) == []


def test_run_of_a_killed_worker_is_finished_by_another_from_its_last_step(
    cluster: Cluster, tmp_path: Path
) -> None:
    db = cluster.db_url
    a = cluster.start_worker()
    run_id = start_three_steps(cluster, tmp_path, a)
    a.kill()  # SIGKILL in the middle of step 2
    (tmp_path / "release").touch()
    b = cluster.start_worker()

    assert cluster.wait_finished(run_id) == "succeeded"
    run = show(db, run_id)
    assert run["result"] == {"value": 22, "pid": b.pid}
    assert f":{b.pid}:" in run["worker"]
    assert run["recoveries"] >= 1
    # Step 1 completed before the crash: never run again. Step 2 was in flight: run again.
    assert lines(tmp_path / "first") == [str(a.pid)]
    assert lines(tmp_path / "second") == [str(a.pid), str(b.pid)]
    assert lines(tmp_path / "third") == [str(b.pid)]
    assert [(s["name"], s["status"], s["attempts"]) for s in run["steps"]] == [
        ("first", "succeeded", 1),
        ("second", "succeeded", 2),
        ("third", "succeeded", 1),
    ]
    terminal = [e for e in run["events"] if e["status"] in TERMINAL]
    assert [e["status"] for e in terminal] == ["succeeded"]
    alive = {w["pid"]: w["alive"] for w in cli_json(["workers", "list"], db)}
    assert alive == {a.pid: False, b.pid: True}


def test_worker_paused_past_its_lease_loses_the_run_and_its_writes_are_fenced(
    cluster: Cluster, tmp_path: Path
) -> None:
    db = cluster.db_url
    a = cluster.start_worker()
    run_id = start_three_steps(cluster, tmp_path, a)
    # Frozen inside step 2: no heartbeat, its lease (2 s) runs out.
    freeze_between_transactions(a, db)
    try:
        b = cluster.start_worker()
        # B requeues the expired run, claims it and enters step 2 itself.
        wait_for(lambda: len(lines(tmp_path / "second")) == 2, timeout=60, message="B to take over")
        assert lines(tmp_path / "second") == [str(a.pid), str(b.pid)]
        (tmp_path / "release").touch()
        assert cluster.wait_finished(run_id) == "succeeded"
    finally:
        a.signal(signal.SIGCONT)
    # A wakes up inside step 2, finds the release file and tries to record the step and go
    # on to step 3. Stop it and wait for its exit: whatever it was going to do is done then.
    assert a.terminate(timeout=60) == 0, a.output()

    run = show(db, run_id)
    assert run["status"] == "succeeded"
    assert run["result"] == {"value": 22, "pid": b.pid}
    assert f":{b.pid}:" in run["worker"]
    # A's late completion of step 2 was rejected, so it never reached step 3.
    assert lines(tmp_path / "third") == [str(b.pid)]
    assert lines(tmp_path / "first") == [str(a.pid)]
    assert [(s["name"], s["status"], s["attempts"]) for s in run["steps"]] == [
        ("first", "succeeded", 1),
        ("second", "succeeded", 2),
        ("third", "succeeded", 1),
    ]
    # A's late write of step 2 was rejected: the step still ends before step 3 started.
    second, third = run["steps"][1], run["steps"][2]
    assert parse_utc(second["finished_at"]) <= parse_utc(third["started_at"])
    assert parse_utc(third["finished_at"]) <= parse_utc(run["finished_at"])
    # So were its log lines: only B's line of step 2 is in the run's log.
    released = [e for e in cli_json(["logs", run_id], db) if "released" in e["message"]]
    assert [(e["step"], e["message"]) for e in released] == [
        ("second", f"second step released in {b.pid}")
    ]
    # Exactly one outcome: one terminal event, written by B.
    terminal = [e for e in run["events"] if e["status"] in TERMINAL]
    assert len(terminal) == 1, run["events"]
    assert terminal[0]["status"] == "succeeded" and f":{b.pid}:" in terminal[0]["worker"]
    assert run["events"][-1] == terminal[0]
    # An operator reading A's log sees which run was taken from it, and why.
    assert f"gave up run {run_id}: its lease is lost" in a.output()


def test_sigterm_drains_running_runs_within_the_grace_period(
    cluster: Cluster, tmp_path: Path
) -> None:
    db = cluster.db_url
    # A long grace, so that the runs finishing in it does not depend on this machine's speed.
    worker = cluster.start_worker(env={"LEGATO_GRACE_SECONDS": "120"})
    names = ("a", "b", "c")
    run_ids = [submit_three_steps(cluster, tmp_path / name) for name in names]
    for run_id, name in zip(run_ids, names, strict=True):
        wait_in_step_two(cluster, run_id, tmp_path / name, worker)

    worker.signal(signal.SIGTERM)
    wait_for_log(worker, "signal SIGTERM")
    # A stopping worker claims nothing new.
    late = submit(db, "two_steps", "--param", "x=1")
    for name in names:
        (tmp_path / name / "release").touch()
    assert worker.proc.wait(timeout=60) == 0, worker.output()

    runs = {r["id"]: r for r in cli_json(["runs", "list"], db)}
    for run_id in run_ids:
        assert runs[run_id]["status"] == "succeeded", runs[run_id]
        assert runs[run_id]["result"] == {"value": 22, "pid": worker.pid}
    assert runs[late]["status"] == "queued"
    nothing_running(db)
    assert cli_json(["workers", "list"], db)[0]["alive"] is False


def test_sigterm_with_a_short_grace_hands_runs_back_to_be_resumed_elsewhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    db = cluster.db_url
    a = cluster.start_worker(env={"LEGATO_GRACE_SECONDS": "1"})
    run_id = start_three_steps(cluster, tmp_path, a)
    a.signal(signal.SIGTERM)
    assert a.proc.wait(timeout=60) == 0, a.output()
    # Handed back at once, not left "running" until its lease expires.
    assert cluster.status(run_id) == "queued"
    nothing_running(db)

    (tmp_path / "release").touch()
    b = cluster.start_worker()
    assert cluster.wait_finished(run_id) == "succeeded"
    run = show(db, run_id)
    assert run["result"] == {"value": 22, "pid": b.pid}
    assert lines(tmp_path / "first") == [str(a.pid)]
    assert lines(tmp_path / "second") == [str(a.pid), str(b.pid)]
    statuses = [e["status"] for e in run["events"]]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]


def test_second_sigterm_hands_back_at_once(cluster: Cluster, tmp_path: Path) -> None:
    db = cluster.db_url
    grace = 300.0
    a = cluster.start_worker(env={"LEGATO_GRACE_SECONDS": str(grace)})
    run_id = start_three_steps(cluster, tmp_path, a)
    a.signal(signal.SIGTERM)
    wait_for_log(a, "signal SIGTERM")
    assert a.proc.poll() is None  # waiting for its running run, within the grace period
    began = time.monotonic()
    a.signal(signal.SIGTERM)
    assert a.proc.wait(timeout=60) == 0, a.output()
    assert time.monotonic() - began < grace / 5
    assert "second signal" in a.output()
    assert cluster.status(run_id) == "queued"
    nothing_running(db)
