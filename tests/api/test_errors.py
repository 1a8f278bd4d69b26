"""Bad input answers 4xx problem documents (RFC 9457) and writes nothing."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from legato import App
from legato.api import create_app
from legato.config import Settings
from legato.store import RunFilter, Store

from .conftest import Headers

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

API = "/api/v1"
LIMIT = 4096  # bytes: a small body limit so the tests send small bodies


@pytest.fixture
def api(db_url: str, store: Store) -> Iterator[TestClient]:
    """The API with a registered flow and a small body limit (no worker)."""
    app = App(db_url)
    app.use_store(store)

    @app.flow
    def echo(text: str = "") -> str:
        return text

    app.register()
    with TestClient(create_app(store, Settings.from_env(max_payload_bytes=LIMIT))) as client:
        yield client


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    return body


def nothing_written(store: Store) -> bool:
    return not store.list_runs(RunFilter(limit=10)) and len(store.list_tokens()) == 3


def test_an_oversize_body_is_refused_before_anything_is_written(
    api: TestClient, store: Store, tokens: dict[str, Headers]
) -> None:
    admin = tokens["admin"]
    big = "x" * (LIMIT + 1)
    for path, body in [
        ("/runs", {"flow": "echo", "params": {"text": big}}),
        ("/events", {"name": "anything", "payload": {"text": big}}),
        ("/tokens", {"name": big, "role": "viewer"}),
    ]:
        problem = assert_problem(api.post(API + path, json=body, headers=admin), 413)
        assert problem["type"].endswith("payload-too-large")
        assert str(LIMIT) in problem["detail"]

    # Without a Content-Length (chunked), the limit holds while reading.
    def chunks() -> Iterator[bytes]:
        yield b'{"flow": "echo", "params": {"text": "'
        for _ in range(LIMIT // 1000 + 1):
            yield b"y" * 1000
        yield b'"}}'

    headers = {**admin, "Content-Type": "application/json"}
    assert_problem(api.post(f"{API}/runs", content=chunks(), headers=headers), 413)
    assert nothing_written(store)
    # Just under the limit is fine.
    fits = api.post(
        f"{API}/runs", json={"flow": "echo", "params": {"text": "z" * (LIMIT - 200)}}, headers=admin
    )
    assert fits.status_code == 201, fits.text


def test_the_default_body_limit_is_one_mebibyte(store: Store, tokens: dict[str, Headers]) -> None:
    with TestClient(create_app(store, Settings())) as client:
        body = b'{"flow": "echo", "params": {"text": "' + b"x" * (1024 * 1024) + b'"}}'
        headers = {**tokens["operator"], "Content-Type": "application/json"}
        assert_problem(client.post(f"{API}/runs", content=body, headers=headers), 413)
    assert not store.list_runs(RunFilter(limit=10))


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"flow": "echo",}', b"not json at all", b"\xff\xfe", b'["a list"]', b""],
    ids=["truncated", "trailing-comma", "text", "not-utf8", "array", "empty"],
)
def test_malformed_json_is_a_422(
    api: TestClient, store: Store, tokens: dict[str, Headers], body: bytes
) -> None:
    headers = {**tokens["operator"], "Content-Type": "application/json"}
    for path in ("/runs", "/events"):
        problem = assert_problem(api.post(API + path, content=body, headers=headers), 422)
        assert problem["type"].endswith("invalid-input")
        assert problem["errors"], problem
    assert nothing_written(store)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"flow": "echo", "params": {"nope": 1}}, "no parameter 'nope'"),
        ({"flow": "echo", "params": "text"}, "params"),
        ({"flow": "echo", "delay_seconds": -1}, "delay_seconds"),
        ({"flow": "echo", "surprise": True}, "surprise"),
        ({"flow": ""}, "flow"),
        ({"flow": "echo", "at": "yesterday"}, "at"),
        ({"flow": "echo", "at": "2026-01-01T00:00:00Z", "delay_seconds": 5}, "either"),
    ],
)
def test_invalid_submissions_are_422_and_write_nothing(
    api: TestClient, store: Store, tokens: dict[str, Headers], body: dict[str, Any], where: str
) -> None:
    problem = assert_problem(api.post(f"{API}/runs", json=body, headers=tokens["operator"]), 422)
    assert where in problem["detail"], problem
    assert nothing_written(store)


UNKNOWN = [
    ("GET", "/runs/no-such-run"),
    ("GET", "/runs/no-such-run/logs"),
    ("GET", "/runs/no-such-run/logs/stream"),
    ("POST", "/runs/no-such-run/cancel"),
    ("POST", "/runs/no-such-run/retry"),
    ("GET", "/flows/no_such_flow"),
    ("POST", "/flows/no_such_flow/schedules/pause"),
    ("POST", "/flows/no_such_flow/schedules/resume"),
    ("GET", "/schedules?flow=no_such_flow"),
    ("GET", "/schedules/upcoming?flow=no_such_flow"),
    ("DELETE", "/tokens/no-such-token"),
    ("GET", "/no/such/endpoint"),
]


def test_unknown_ids_are_404(api: TestClient, tokens: dict[str, Headers]) -> None:
    for method, path in UNKNOWN:
        assert_problem(api.request(method, API + path, headers=tokens["admin"]), 404)


def test_submitting_an_unknown_flow_is_a_404(
    api: TestClient, store: Store, tokens: dict[str, Headers]
) -> None:
    response = api.post(f"{API}/runs", json={"flow": "no_such_flow"}, headers=tokens["operator"])
    problem = assert_problem(response, 404)
    assert "echo" in problem["detail"]  # names the known flows
    assert nothing_written(store)


def test_invalid_filters_are_422(api: TestClient, tokens: dict[str, Headers]) -> None:
    for query in (
        "since=soon",
        "until=2026-13-45",
        "status=sleepy",
        "sort=id",
        "limit=0",
        "cursor=%24%24",
    ):
        assert_problem(api.get(f"{API}/runs?{query}", headers=tokens["viewer"]), 422)


def test_a_forged_cursor_is_a_422(api: TestClient, tokens: dict[str, Headers]) -> None:
    for cursor in ("bm90LWpzb24", "WyItY3JlYXRlZF9hdCIsIngiLCJ5Il0", "W10"):
        response = api.get(f"{API}/runs", params={"cursor": cursor}, headers=tokens["viewer"])
        assert_problem(response, 422)
