"""Listing runs page by page (keyset cursors), filters, and idempotent submission."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from legato import App
from legato.api import create_app
from legato.config import Settings
from legato.store import Store

from .conftest import Headers

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

API = "/api/v1"


@pytest.fixture
def api(db_url: str, store: Store) -> Iterator[TestClient]:
    app = App(db_url)
    app.use_store(store)

    @app.flow
    def alpha(n: int = 0) -> int:
        return n

    @app.flow(queue="side")
    def beta(n: int = 0) -> int:
        return n

    app.register()
    with TestClient(create_app(store, Settings.from_env())) as client:
        yield client


def test_pages_follow_the_cursor_through_every_run_once(
    api: TestClient, tokens: dict[str, Headers]
) -> None:
    operator = tokens["operator"]
    for n in range(7):
        flow = "alpha" if n % 2 == 0 else "beta"
        created = api.post(f"{API}/runs", json={"flow": flow, "params": {"n": n}}, headers=operator)
        assert created.status_code == 201
    everything = api.get(f"{API}/runs", headers=operator).json()
    assert everything["next_cursor"] is None and len(everything["items"]) == 7
    newest_first = [r["id"] for r in everything["items"]]
    for sort, expected in (("-created_at", newest_first), ("created_at", newest_first[::-1])):
        seen: list[str] = []
        params: dict[str, str | int] = {"limit": 3, "sort": sort}
        while True:
            response = api.get(f"{API}/runs", params=params, headers=operator)
            page = response.json()
            seen += [r["id"] for r in page["items"]]
            if page["next_cursor"] is None:
                assert "link" not in response.headers
                break
            assert 'rel="next"' in response.headers["link"]
            params["cursor"] = page["next_cursor"]
        assert seen == expected, sort
    # Filters combine with pages.
    side = api.get(f"{API}/runs", params={"queue": "side", "limit": 2}, headers=operator).json()
    assert {r["flow"] for r in side["items"]} == {"beta"} and side["next_cursor"]
    alpha = api.get(f"{API}/runs", params={"flow": "alpha", "status": "queued"}, headers=operator)
    assert len(alpha.json()["items"]) == 4
    manual = api.get(f"{API}/runs", params={"trigger": "retry"}, headers=operator)
    assert manual.json()["items"] == []
    # A cursor of one sort order is refused by another.
    first = api.get(f"{API}/runs", params={"limit": 1}, headers=operator).json()
    other = api.get(
        f"{API}/runs",
        params={"limit": 1, "sort": "created_at", "cursor": first["next_cursor"]},
        headers=operator,
    )
    assert other.status_code == 422


def test_an_idempotency_key_gives_back_the_same_run(
    api: TestClient, tokens: dict[str, Headers]
) -> None:
    body = {"flow": "alpha", "params": {"n": 1}, "idempotency_key": "order-42"}
    first = api.post(f"{API}/runs", json=body, headers=tokens["operator"])
    again = api.post(f"{API}/runs", json=body, headers=tokens["operator"])
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert first.headers["location"] == f"{API}/runs/{first.json()['id']}"
    listed = api.get(f"{API}/runs", headers=tokens["viewer"]).json()["items"]
    assert len(listed) == 1


def test_a_delayed_submission_is_scheduled(api: TestClient, tokens: dict[str, Headers]) -> None:
    body = {"flow": "alpha", "delay_seconds": 3600}
    run = api.post(f"{API}/runs", json=body, headers=tokens["operator"]).json()
    assert run["status"] == "scheduled"
    queues = {q["name"]: q for q in api.get(f"{API}/queues", headers=tokens["viewer"]).json()}
    assert queues["default"]["scheduled"] == 1 and queues["default"]["queued"] == 0
