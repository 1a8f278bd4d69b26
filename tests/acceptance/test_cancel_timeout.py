"""Stopping runs: cancellation from the CLI, and flow timeouts enforced by the worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.support import (
    Cluster,
    lines,
    parse_utc,
    show,
    submit,
)
from tests.helpers import run_cli, wait_for

pytestmark = pytest.mark.timeout(180)


def test_cancel_a_waiting_run_at_once_and_a_running_run_at_its_next_step(
    cluster: Cluster, tmp_path: Path
) -> None:
    db = cluster.db_url
    cluster.start_worker()

    later = submit(db, "two_steps", "--param", "x=1", "--in", "1h")
    assert cluster.status(later) == "scheduled"
    cancelled = run_cli(["runs", "cancel", later], db)
    assert cancelled.returncode == 0, cancelled.stderr
    run = show(db, later)
    assert run["status"] == "cancelled"
    assert run["started_at"] is None and run["steps"] == []
    parse_utc(run["finished_at"])

    running = submit(db, "cancellable", "--param", f"directory={tmp_path}")
    wait_for(lambda: (tmp_path / "waiting").exists(), timeout=60, message="step 1 to start")
    asked = run_cli(["runs", "cancel", running], db)
    assert asked.returncode == 0, asked.stderr
    assert "next step" in asked.stdout
    # Step 1 returns once the worker has seen the request; the run stops before step 2.
    assert cluster.wait_finished(running) == "cancelled"
    run = show(db, running)
    assert run["status"] == "cancelled"
    assert [(s["name"], s["status"]) for s in run["steps"]] == [("wait_for_cancel", "succeeded")]
    assert lines(tmp_path / "after") == []
    assert run["result"] is None
    assert [e["status"] for e in run["events"]] == ["queued", "running", "cancelled"]


def test_flow_timeouts_stop_busy_and_blocked_code_and_the_worker_keeps_serving(
    cluster: Cluster,
) -> None:
    db = cluster.db_url
    # One slot: the runs below execute one after the other, each needing the slot back.
    worker = cluster.start_worker(concurrency=1)
    spin = submit(db, "spin")  # a pure-Python loop
    nap = submit(db, "nap")  # blocked in time.sleep(60)
    after = run_cli(["submit", "two_steps", "--param", "x=4", "--wait", "--timeout", "120"], db)
    assert after.returncode == 0, after.stdout + after.stderr + cluster.worker_logs()
    assert "succeeded" in after.stdout

    for run_id in (spin, nap):
        run = show(db, run_id)
        assert run["status"] == "failed", run
        assert "FlowTimeout" in run["error"], run["error"]
        assert run["attempts"] == 1
        # Stopped at the 1 s timeout (plus the worker's grace for code that does not stop),
        # not after the 60 s sleep.
        assert 1_000 <= run["duration_ms"] < 15_000, run["duration_ms"]
    assert worker.proc.poll() is None
