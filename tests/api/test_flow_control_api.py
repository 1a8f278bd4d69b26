"""Flow control over HTTP: queue settings, named limits, and why a run is waiting."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from legato import App
from legato.api import create_app
from legato.config import Settings
from legato.store import Store
from tests.helpers import in_process_worker, wait_for

from .conftest import Headers

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

API = "/api/v1"


@pytest.fixture
def app(db_url: str, store: Store) -> Iterator[App]:
    app = App(db_url)
    app.use_store(store)

    @app.flow(queue="reports", limits=["warehouse"])
    def report(n: int = 0) -> int:
        return n

    app.register()
    yield app


@pytest.fixture
def api(app: App, store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store, Settings.from_env())) as client:
        yield client


def waiting_reasons(api: TestClient, run_id: str, headers: Headers) -> list[str]:
    run = api.get(f"{API}/runs/{run_id}", headers=headers).json()
    return [r["reason"] for r in (run["waiting"] or {"reasons": []})["reasons"]]


def test_queue_pause_and_limits_explain_a_waiting_run_until_they_clear(
    app: App, api: TestClient, tokens: dict[str, Headers]
) -> None:
    operator, viewer = tokens["operator"], tokens["viewer"]
    paused = api.post(f"{API}/queues/reports/pause", headers=operator)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    limit = api.put(f"{API}/limits/warehouse", json={"concurrency": 0}, headers=operator)
    assert limit.status_code == 200 and limit.json()["concurrency"] == 0
    assert api.put(f"{API}/limits/warehouse", json={}, headers=operator).status_code == 422

    run = api.post(f"{API}/runs", json={"flow": "report", "params": {"n": 3}}, headers=operator)
    run_id = run.json()["id"]
    with in_process_worker(app, queues=["reports"], concurrency=2):
        reasons = waiting_reasons(api, run_id, viewer)
        assert reasons[0] == "queue_paused" and "limit" in reasons, reasons
        queues = {q["name"]: q for q in api.get(f"{API}/queues", headers=viewer).json()}
        assert queues["reports"]["paused"] is True and queues["reports"]["queued"] == 1

        assert api.post(f"{API}/queues/reports/resume", headers=operator).json()["paused"] is False
        assert waiting_reasons(api, run_id, viewer)[0] == "limit"

        listed = {item["name"]: item for item in api.get(f"{API}/limits", headers=viewer).json()}
        assert listed["warehouse"]["concurrency"] == 0
        assert api.delete(f"{API}/limits/warehouse", headers=operator).status_code == 204
        assert api.delete(f"{API}/limits/warehouse", headers=operator).status_code == 204

        def finished() -> bool:
            return bool(
                api.get(f"{API}/runs/{run_id}", headers=viewer).json()["status"] == "succeeded"
            )

        wait_for(finished, timeout=30, message="the run to start once its limit is gone")
        assert api.get(f"{API}/runs/{run_id}", headers=viewer).json()["waiting"] is None


def test_queue_settings_are_patched_field_by_field(
    api: TestClient, tokens: dict[str, Headers]
) -> None:
    operator = tokens["operator"]
    first = api.patch(
        f"{API}/queues/reports", json={"strict": True, "concurrency": 3}, headers=operator
    )
    assert first.json() == {"name": "reports", "paused": False, "strict": True, "concurrency": 3}
    second = api.patch(f"{API}/queues/reports", json={"paused": True}, headers=operator)
    assert second.json() == {"name": "reports", "paused": True, "strict": True, "concurrency": 3}
    cleared = api.patch(f"{API}/queues/reports", json={"concurrency": None}, headers=operator)
    assert cleared.json()["concurrency"] is None and cleared.json()["strict"] is True
    bad = api.patch(f"{API}/queues/reports", json={"concurrency": 0}, headers=operator)
    assert bad.status_code == 422
    assert (
        api.patch(
            f"{API}/queues/reports", json={"paused": True}, headers=tokens["viewer"]
        ).status_code
        == 403
    )
    assert api.delete(f"{API}/limits/flow:report", headers=operator).status_code == 422
