"""Authentication and roles on every route of the API, enumerated from the app itself.

The routes come from the application's route table (checked against the OpenAPI document),
so a route added later is covered without editing this file: if it needs a path parameter
this file does not know, the test fails and says which.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from legato import App
from legato.api import create_app
from legato.api.auth import API_PREFIX, PUBLIC_PATHS, authorize, required_role
from legato.client import Client
from legato.config import Settings
from legato.store import RunFilter, Store
from legato.tokens import ROLES, allows

from .conftest import Headers

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str  # e.g. /api/v1/runs/{run_id}

    @property
    def label(self) -> str:
        return f"{self.method} {self.template}"


def protected_endpoints(app: FastAPI) -> list[Endpoint]:
    """Every (method, path) of the API and /metrics: what the auth dependency must cover.

    Read from the route table the way FastAPI builds the OpenAPI document (included
    routers flattened), so no route can be missed.
    """
    found = []
    for route in iter_route_contexts(app.routes):
        path = route.path
        if path is None or path in PUBLIC_PATHS:
            continue
        if not (path.startswith(API_PREFIX + "/") or path == "/metrics"):
            continue  # not the API (the dashboard, mounted next to it, has its own tests)
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append(Endpoint(method, path))
    return found


def dependencies_of(app: FastAPI) -> dict[str, set[Any]]:
    """For each route path, the callables its dependency tree runs."""
    out: dict[str, set[Any]] = {}

    def walk(dependant: Any, into: set[Any]) -> None:
        for sub in dependant.dependencies:
            into.add(sub.call)
            walk(sub, into)

    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        if route.path is not None and dependant is not None:
            walk(dependant, out.setdefault(route.path, set()))
    return out


@dataclass
class World:
    """What the requests of this test act on."""

    api: TestClient
    store: Store
    tokens: dict[str, Headers]
    values: dict[str, str]
    endpoints: list[Endpoint]


@pytest.fixture
def world(db_url: str, store: Store) -> Iterator[World]:
    """The API over a store with a registered flow, a finished run and tokens per role.

    No worker: every run here stays as the API leaves it.
    """
    app = App(db_url)
    app.use_store(store)

    @app.flow(schedule="0 3 * * *")
    def guarded(n: int = 1) -> int:
        return n

    app.register()
    client = Client(store)
    done = guarded.submit(1)
    client.cancel(done.id)  # a finished (cancelled) run: its log stream ends at once
    victim = client.create_token("victim", "viewer")
    headers = {
        role: {"Authorization": f"Bearer {client.create_token(f'{role}-test', role)['token']}"}
        for role in ROLES
    }
    api = create_app(store, Settings.from_env())
    with TestClient(api) as test_client:
        yield World(
            api=test_client,
            store=store,
            tokens=headers,
            values={"run_id": done.id, "name": "guarded", "token_id": victim["id"]},
            endpoints=protected_endpoints(api),
        )


# Bodies that make each action succeed (an action without one here is sent `{}`).
BODIES: dict[str, dict[str, Any]] = {
    f"POST {API_PREFIX}/runs": {"flow": "guarded", "params": {"n": 2}},
    f"POST {API_PREFIX}/events": {"name": "nobody.listens"},
    f"POST {API_PREFIX}/tokens": {"name": "made-by-admin", "role": "viewer"},
    f"PUT {API_PREFIX}/limits/{{name}}": {"concurrency": 2},
}


def call(world: World, endpoint: Endpoint, headers: Headers | None) -> Any:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in world.values, (
            f"{endpoint.label}: no test value for path parameter {name!r}; add one to "
            "world.values in tests/api/test_auth.py"
        )
        return world.values[name]

    path = re.sub(r"\{(\w+)(?::\w+)?\}", value, endpoint.template)
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if endpoint.method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = BODIES.get(endpoint.label, {})
    return world.api.request(endpoint.method, path, **kwargs)


def assert_problem(response: Any, status: int, label: str) -> None:
    assert response.status_code == status, (label, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), label
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"], (label, body)


def test_the_route_table_is_what_the_openapi_document_describes(world: World) -> None:
    documented = {
        Endpoint(method.upper(), path)
        for path, item in world.api.get(f"{API_PREFIX}/openapi.json").json()["paths"].items()
        for method in item
        if path not in PUBLIC_PATHS
    }
    assert documented == set(world.endpoints)
    labels = {e.label for e in world.endpoints}
    # The log stream and the metrics are protected routes like the others.
    assert f"GET {API_PREFIX}/runs/{{run_id}}/logs/stream" in labels
    assert "GET /metrics" in labels
    assert len(world.endpoints) >= 20
    # ... and each of them runs the one auth dependency.
    depends = dependencies_of(world.api.app)  # type: ignore[arg-type]
    for endpoint in world.endpoints:
        assert authorize in depends[endpoint.template], endpoint.label


def test_without_a_token_every_route_answers_401(world: World) -> None:
    for endpoint in world.endpoints:
        response = call(world, endpoint, None)
        assert_problem(response, 401, endpoint.label)
        assert response.headers["www-authenticate"].startswith("Bearer")
        bad = call(world, endpoint, {"Authorization": "Bearer lgt_not-a-token"})
        assert_problem(bad, 401, endpoint.label)


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reaches_exactly_what_it_may(world: World, role: str) -> None:
    """viewer reads, operator also acts, admin also manages tokens; nothing else passes."""
    for endpoint in world.endpoints:
        needed = required_role(endpoint.method, endpoint.template)
        response = call(world, endpoint, world.tokens[role])
        if allows(role, needed):
            assert response.status_code < 400, (role, endpoint.label, response.text)
        else:
            assert_problem(response, 403, f"{role}: {endpoint.label}")


def test_the_roles_follow_the_kind_of_route(world: World) -> None:
    for endpoint in world.endpoints:
        needed = required_role(endpoint.method, endpoint.template)
        if endpoint.template.startswith(f"{API_PREFIX}/tokens"):
            assert needed == "admin", endpoint.label
        elif endpoint.method == "GET":
            assert needed == "viewer", endpoint.label
        else:
            assert needed == "operator", endpoint.label


def test_a_refused_action_writes_nothing(world: World) -> None:
    before = len(world.store.list_runs(_all()))
    viewer = world.tokens["viewer"]
    refused = world.api.post(
        f"{API_PREFIX}/runs", json={"flow": "guarded", "params": {"n": 5}}, headers=viewer
    )
    assert_problem(refused, 403, "viewer submits")
    refused = world.api.post(
        f"{API_PREFIX}/flows/guarded/schedules/pause", headers=world.tokens["viewer"]
    )
    assert_problem(refused, 403, "viewer pauses")
    operator = world.tokens["operator"]
    refused = world.api.post(
        f"{API_PREFIX}/tokens", json={"name": "sneaky", "role": "admin"}, headers=operator
    )
    assert_problem(refused, 403, "operator creates a token")
    assert len(world.store.list_runs(_all())) == before
    assert not world.store.get_flow("guarded").schedules_paused  # type: ignore[union-attr]
    assert "sneaky" not in {t["name"] for t in world.store.list_tokens()}
    # Invalid input from a caller who may not act is a 403, not a 422 that says more.
    assert_problem(
        world.api.post(f"{API_PREFIX}/runs", content=b"{", headers=viewer), 403, "viewer 422"
    )
    assert_problem(world.api.post(f"{API_PREFIX}/runs", content=b"{"), 401, "anonymous 422")


def test_an_operator_acts(world: World) -> None:
    operator = world.tokens["operator"]
    created = world.api.post(
        f"{API_PREFIX}/runs", json={"flow": "guarded", "params": {"n": 7}}, headers=operator
    )
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["status"] == "queued" and run["params"] == {"n": 7}
    cancelled = world.api.post(f"{API_PREFIX}/runs/{run['id']}/cancel", headers=operator)
    assert cancelled.json() == {"id": run["id"], "status": "cancelled"}
    retried = world.api.post(f"{API_PREFIX}/runs/{run['id']}/retry", headers=operator)
    assert retried.status_code == 201 and retried.json()["retry_of"] == run["id"]
    paused = world.api.post(f"{API_PREFIX}/flows/guarded/schedules/pause", headers=operator)
    assert paused.json() == {"flow": "guarded", "paused": True}
    assert world.store.get_flow("guarded").schedules_paused  # type: ignore[union-attr]


def test_tokens_are_managed_by_admins_and_revoked_tokens_stop_working(world: World) -> None:
    admin = world.tokens["admin"]
    made = world.api.post(
        f"{API_PREFIX}/tokens", json={"name": "ci", "role": "operator"}, headers=admin
    )
    assert made.status_code == 201, made.text
    secret = made.json()["token"]
    listed = world.api.get(f"{API_PREFIX}/tokens", headers=admin).json()
    assert "ci" in {t["name"] for t in listed}
    assert all("token" not in t and "token_hash" not in t for t in listed)
    ci = {"Authorization": f"Bearer {secret}"}
    assert world.api.get(f"{API_PREFIX}/runs", headers=ci).status_code == 200
    revoked = world.api.delete(f"{API_PREFIX}/tokens/{made.json()['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert_problem(world.api.get(f"{API_PREFIX}/runs", headers=ci), 401, "revoked token")


def test_public_routes_need_no_token_and_reveal_no_data(world: World) -> None:
    assert world.api.get("/healthz").json() == {"status": "ok"}
    ready = world.api.get("/readyz").json()
    assert ready["ready"] is True
    assert world.api.get(f"{API_PREFIX}/openapi.json").status_code == 200
    assert world.api.get(f"{API_PREFIX}/docs").status_code == 200
    for path in PUBLIC_PATHS:
        assert "guarded" not in world.api.get(path).text, path


def test_auth_failures_are_logged_without_the_token(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "lgt_this-one-must-not-appear-in-any-log"
    with caplog.at_level(logging.INFO):
        world.api.get(f"{API_PREFIX}/runs", headers={"Authorization": f"Bearer {secret}"})
        world.api.post(f"{API_PREFIX}/runs/x/cancel", headers=world.tokens["viewer"])
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("legato")]
    assert any("401" in m for m in messages) and any("403" in m for m in messages), messages
    viewer_secret = world.tokens["viewer"]["Authorization"].split()[1]
    assert not any(secret in m or viewer_secret in m for m in messages)


def test_a_loopback_server_without_tokens_is_open_but_an_exposed_one_is_closed(
    store: Store,
) -> None:
    with TestClient(create_app(store, Settings.from_env())) as open_api:
        assert open_api.get(f"{API_PREFIX}/runs").status_code == 200
        assert open_api.get("/metrics").status_code == 200
    exposed = create_app(store, Settings.from_env(), require_auth=True)
    with TestClient(exposed) as closed_api:
        for endpoint in protected_endpoints(exposed):
            if "{" not in endpoint.template:
                response = closed_api.request(endpoint.method, endpoint.template)
                assert_problem(response, 401, endpoint.label)
    # The first token closes an open server at once.
    with TestClient(create_app(store, Settings.from_env())) as api:
        Client(store).create_token("first", "viewer")
        assert_problem(api.get(f"{API_PREFIX}/runs"), 401, "after the first token")


def _all() -> RunFilter:
    return RunFilter(limit=10_000)
