"""Many workers sharing one PostgreSQL database: every run is executed exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from legato import App
from tests.acceptance.support import Cluster, lines
from tests.helpers import cli_json, wait_for

RUNS = 500


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_two_workers_execute_500_runs_exactly_once(pg_cluster: Cluster, tmp_path: Path) -> None:
    db = pg_cluster.db_url
    a = pg_cluster.start_worker(concurrency=4)
    b = pg_cluster.start_worker(concurrency=4)
    out = tmp_path / "executed"

    # Submitted through the SDK while both workers are claiming (500 CLI processes would take
    # minutes); each run's flow body appends the run's id to one shared file.
    app = App(db)
    try:
        submitted = [app.submit("bump", {"path": str(out)}).id for _ in range(RUNS)]
    finally:
        app.close()
    assert len(set(submitted)) == RUNS

    def drained() -> bool:
        return not pg_cluster.store.queue_counts()  # nothing queued or running any more

    wait_for(drained, timeout=180, interval=0.2, message="all runs to finish")

    executed = lines(out)
    duplicates = [run_id for run_id, n in Counter(executed).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} runs executed more than once"
    assert len(executed) == RUNS and set(executed) == set(submitted)

    runs = cli_json(["runs", "list", "--limit", str(RUNS * 2)], db)
    assert len(runs) == RUNS
    assert {r["id"] for r in runs} == set(submitted)
    assert Counter(r["status"] for r in runs) == {"succeeded": RUNS}
    assert Counter((r["attempts"], r["recoveries"]) for r in runs) == {(1, 0): RUNS}
    assert {r["result"] for r in runs} == set(submitted)

    # Both workers took part (otherwise this test would not exercise concurrent claims).
    by_worker = Counter(r["worker"].split(":")[1] for r in runs)
    assert set(by_worker) == {str(a.pid), str(b.pid)}, by_worker
