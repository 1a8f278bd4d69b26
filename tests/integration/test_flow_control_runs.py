"""Flow control, continued: rate limits across workers, process isolation, and "why is my
run waiting?" — each reason appears while its cause is present and goes when it clears."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from legato.client import Client
from legato.store import open_store
from legato.store.queries import render
from tests.flows.flow_control import app
from tests.helpers import cli_json, run_cli, wait_for, worker_process

APP = "tests/flows/flow_control.py"


@pytest.fixture
def client(db_url: str) -> Iterator[Client]:
    store = open_store(db_url)
    app.use_store(store)
    app.register()
    yield Client(store)
    store.close()


def submit(client: Client, flow: str, params: dict[str, Any] | None = None, **kw: Any) -> str:
    run, _ = client.submit(flow, params or {}, **kw)
    return str(run["id"])


def reason(client: Client, run_id: str) -> str | None:
    waiting = client.run(run_id)["waiting"]
    return None if waiting is None else str(waiting["reason"])


def reasons(client: Client, run_id: str) -> set[str]:
    waiting = client.run(run_id)["waiting"]
    return set() if waiting is None else {r["reason"] for r in waiting["reasons"]}


def started_at(client: Client, flow: str) -> list[int]:
    rows = client.store._read(
        render(
            "SELECT started_at FROM runs WHERE flow = :flow AND started_at IS NOT NULL "
            "ORDER BY started_at",
            client.store.dialect,
        ),
        {"flow": flow},
    )
    return [r["started_at"] for r in rows]


@pytest.mark.timeout(120)
def test_rate_limit_holds_across_two_workers(db_url: str, client: Client) -> None:
    ids = [submit(client, "rated", {"i": i}) for i in range(6)]  # 2 starts per 3 s
    with worker_process(APP, db_url, concurrency=4), worker_process(APP, db_url, concurrency=4):
        wait_for(lambda: client.run(ids[-1])["status"] == "succeeded", timeout=60)
    starts = started_at(client, "rated")
    assert len(starts) == 6
    for i in range(len(starts) - 2):
        assert starts[i + 2] - starts[i] >= 3000, f"3 starts within 3 s: {starts}"


@pytest.mark.timeout(120)
def test_per_key_rate_limit_throttles_one_tenant_only(db_url: str, client: Client) -> None:
    busy = [submit(client, "rated_per_tenant", {"tenant": "busy", "i": i}) for i in range(8)]
    quiet = [submit(client, "rated_per_tenant", {"tenant": "quiet", "i": i}) for i in range(2)]
    with worker_process(APP, db_url, concurrency=4):
        wait_for(lambda: all(client.run(r)["status"] == "succeeded" for r in quiet), timeout=30)
        waiting = [client.run(r)["waiting"] for r in busy]
        limited = [w for w in waiting if w is not None and w["reason"] == "rate_limited"]
        assert limited, "the busy tenant should be rate limited while the quiet one ran"
        assert limited[0]["key"] == "busy" and limited[0]["until"]
        wait_for(lambda: all(client.run(r)["status"] == "succeeded" for r in busy), timeout=60)


@pytest.mark.timeout(120)
def test_process_isolated_flow_runs_steps_and_logs_in_a_child(db_url: str, client: Client) -> None:
    with worker_process(APP, db_url) as worker:
        run_id = submit(client, "isolated", {"x": 21})
        wait_for(lambda: client.run(run_id)["status"] == "succeeded", timeout=60)
        run = client.run(run_id)
        assert run["result"]["value"] == 42
        assert run["result"]["pid"] != worker.pid
        assert [s["name"] for s in run["steps"]] == ["double"]
        wait_for(lambda: client.logs(run_id), timeout=10)
        assert any("child pid" in line["message"] for line in client.logs(run_id))


@pytest.mark.timeout(120)
def test_process_isolation_kills_on_timeout_and_survives_crashes(
    db_url: str, client: Client
) -> None:
    with worker_process(APP, db_url, concurrency=2) as worker:
        hang = submit(client, "isolated_hang")
        crash = submit(client, "isolated_exit")
        wait_for(lambda: client.run(hang)["status"] == "failed", timeout=60)
        wait_for(lambda: client.run(crash)["status"] == "failed", timeout=60)
        assert client.run(hang)["error"].startswith("FlowTimeout: flow 'isolated_hang' timed out")
        assert "process was killed" in client.run(hang)["error"]
        assert client.run(crash)["error"] == (
            "ChildProcessDied: the process running flow 'isolated_exit' exited with code 1 "
            "before it answered"
        )
        # The worker is still alive and serving.
        after = submit(client, "isolated", {"x": 1})
        wait_for(lambda: client.run(after)["status"] == "succeeded", timeout=60)
        assert worker.proc.poll() is None


@pytest.mark.timeout(120)
def test_process_isolation_memory_limit(db_url: str, client: Client) -> None:
    with worker_process(APP, db_url):
        run_id = submit(client, "isolated_hog")
        wait_for(lambda: client.run(run_id)["status"] == "failed", timeout=60)
    assert client.run(run_id)["error"].startswith("MemoryError")


@pytest.mark.timeout(150)
def test_each_waiting_reason_appears_and_clears(
    db_url: str, client: Client, tmp_path: Path
) -> None:
    # Not due: a run due in 2 s; then, with no worker at all: waiting for a worker.
    later = submit(client, "pausable", at=datetime.now(UTC) + timedelta(seconds=2))
    waiting = client.run(later)["waiting"]
    assert waiting["reason"] == "not_due" and waiting["until"]
    assert "not due until" in waiting["message"]
    wait_for(lambda: reason(client, later) == "no_worker", timeout=30)
    assert (
        "waiting for a worker on queue 'paused-q' (none alive)"
        in (client.run(later)["waiting"]["message"])
    )
    # Queue paused: the reason comes with the pause and goes with the resume.
    client.set_queue("paused-q", paused=True)
    assert reason(client, later) == "queue_paused"
    client.set_queue("paused-q", paused=False)
    assert reason(client, later) == "no_worker"

    # The CLI shows the reason, in JSON and for humans.
    shown = cli_json(["runs", "show", later], db_url)
    assert shown["waiting"]["reason"] == "no_worker"
    human = run_cli(["runs", "show", later], db_url)
    assert "waiting" in human.stdout and "none alive" in human.stdout

    client.set_limit("warehouse-db", 1)
    d = str(tmp_path)
    with worker_process(APP, db_url, queues=["default", "paused-q"], concurrency=4):
        wait_for(lambda: client.run(later)["status"] == "succeeded", timeout=30)
        assert client.run(later)["waiting"] is None
        # Blocked by a limit: 1/1 held by the first run.
        holder = submit(client, "warehouse", {"directory": d})
        wait_for(lambda: client.run(holder)["status"] == "running", timeout=30)
        blocked = submit(client, "warehouse", {"directory": d})
        wait_for(lambda: reason(client, blocked) == "limit", timeout=30)
        waiting = client.run(blocked)["waiting"]
        assert waiting["holders"] == [holder] and (waiting["held"], waiting["size"]) == (1, 1)
        assert f"blocked by limit 'warehouse-db': 1/1 held by run(s) {holder}" == waiting["message"]
        # Sleeping until T.
        napper = submit(client, "napper", {"seconds": 2})
        wait_for(lambda: reason(client, napper) == "sleeping", timeout=30)
        assert "sleeping until" in client.run(napper)["waiting"]["message"]
        (tmp_path / "release").write_text("go")
        wait_for(lambda: client.run(blocked)["status"] == "succeeded", timeout=30)
        wait_for(lambda: client.run(napper)["status"] == "succeeded", timeout=30)
        assert client.run(blocked)["waiting"] is None
        # Rate limited until T (2 starts per 3 s), then it runs.
        rated = [submit(client, "rated", {"i": i}) for i in range(3)]
        wait_for(lambda: "rate_limited" in reasons(client, rated[2]), timeout=30)
        assert client.run(rated[2])["waiting"]["until"]
        wait_for(lambda: client.run(rated[2])["status"] == "succeeded", timeout=30)
