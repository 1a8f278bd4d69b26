"""Durable sleep, subflows with gather, and events, with real worker processes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from legato.client import Client
from legato.store import RunFilter, open_store
from tests.helpers import cli_json, run_cli, wait_for, worker_process

APP = "tests/flows/durable.py"


def count(directory: Path, name: str) -> int:
    path = directory / name
    return len(path.read_text().splitlines()) if path.exists() else 0


def status(db_url: str, run_id: str) -> str:
    return str(cli_json(["runs", "show", run_id], db_url)["status"])


def submit(db_url: str, flow: str, params: str) -> str:
    result = run_cli(["submit", flow, "--params", params], db_url)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.timeout(120)
def test_durable_sleep_survives_a_restart_of_every_worker(db_url: str, tmp_path: Path) -> None:
    with worker_process(APP, db_url) as first:
        wait_for(lambda: any(f["name"] == "napper" for f in cli_json(["flows", "list"], db_url)))
        run_id = submit(db_url, "napper", f'{{"directory": "{tmp_path}", "seconds": 3}}')
        wait_for(lambda: status(db_url, run_id) == "sleeping", timeout=30)
        assert first.terminate() == 0  # the only worker stops while the run sleeps
    assert status(db_url, run_id) == "sleeping"
    assert cli_json(["workers", "list"], db_url)[0]["alive"] is False
    with worker_process(APP, db_url):
        wait_for(lambda: status(db_url, run_id) == "succeeded", timeout=60)
    run = cli_json(["runs", "show", run_id], db_url)
    assert run["result"] == "rested"
    assert [s["name"] for s in run["steps"]] == ["note", "legato.sleep", "note"]
    assert count(tmp_path, "before") == 1 and count(tmp_path, "after") == 1


@pytest.mark.timeout(150)
def test_parent_waiting_on_children_survives_kill_9_without_duplicates(
    db_url: str, tmp_path: Path
) -> None:
    with worker_process(APP, db_url, concurrency=4) as first:
        wait_for(lambda: any(f["name"] == "parent" for f in cli_json(["flows", "list"], db_url)))
        parent_id = submit(db_url, "parent", f'{{"directory": "{tmp_path}", "n": 3}}')
        wait_for(lambda: all(count(tmp_path, f"child-{i}-started") for i in range(3)), timeout=30)
        first.signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
    with worker_process(APP, db_url, concurrency=4):
        (tmp_path / "release").write_text("go")
        wait_for(lambda: status(db_url, parent_id) == "succeeded", timeout=90, interval=0.2)
    parent = cli_json(["runs", "show", parent_id], db_url)
    assert parent["result"] == [0, 10, 20]
    store = open_store(db_url)
    children = store.list_runs(RunFilter(parent_id=parent_id))
    store.close()
    assert len(children) == 3
    assert {c["trigger"] for c in children} == {"subflow"}
    assert {c["status"] for c in children} == {"succeeded"}


def test_events_start_subscribed_flows_once_per_key(db_url: str) -> None:
    from legato.loader import load_app

    app = load_app(APP)
    app.database_url = db_url
    app.register()
    client = Client(app.store)
    fr = client.emit(
        "order.created", {"order_id": 7, "country": "FR", "total": 3.5}, idempotency_key="o-7"
    )
    assert sorted(r["flow"] for r in fr) == ["on_french_order", "on_order"]
    assert {r["trigger"] for r in fr} == {"event"}
    again = client.emit("order.created", {"order_id": 7, "country": "FR"}, idempotency_key="o-7")
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in fr)
    us = cli_json(
        ["events", "emit", "order.created", "--payload", '{"order_id": 8, "country": "US"}'], db_url
    )
    assert [r["flow"] for r in us] == ["on_order"]
    assert us[0]["params"] == {"order_id": 8}  # keys the flow does not take are left out
    assert len(app.store.list_runs(RunFilter(flow="on_shipping"))) == 0
    assert len(app.store.list_runs(RunFilter())) == 3
    nothing = run_cli(["events", "emit", "nobody.listens"], db_url)
    assert nothing.returncode == 0 and "no flow is subscribed" in nothing.stdout
    bad = run_cli(["events", "emit", "order.created", "--payload", "[1]"], db_url)
    assert bad.returncode == 1 and bad.stderr.startswith("error: --payload must be a JSON object")
    app.close()
