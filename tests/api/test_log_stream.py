"""The live log stream (Server-Sent Events) over a real uvicorn server, followed with httpx.

The flow prints a line, then waits until the test has *received* that line over the stream
before printing the next one: lines arrive while the run is running, in order, and the
stream ends (``event: end``) once the run has ended.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from legato import App
from legato.api import create_app
from legato.config import Settings
from legato.store import Store
from tests.helpers import in_process_worker, serving

from .conftest import Headers

WAIT = 60.0
LINES = 5


@dataclass
class Event:
    name: str
    data: Any
    id: str | None


def events(response: httpx.Response) -> Iterator[Event]:
    """Parse a text/event-stream into events (comments and ``retry`` ignored)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                yield Event(
                    fields.get("event", "message"), json.loads(fields["data"]), fields.get("id")
                )
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")


@pytest.fixture
def talker(db_url: str, store: Store) -> Iterator[tuple[App, list[threading.Event]]]:
    app = App(db_url)
    app.use_store(store)
    gates = [threading.Event() for _ in range(LINES)]

    @app.step
    def speak(i: int) -> None:
        print(f"line {i}")
        assert gates[i].wait(WAIT), f"line {i} never reached the client"

    @app.flow
    def talk() -> str:
        for i in range(LINES):
            speak(i)
        return "said it all"

    try:
        yield app, gates
    finally:
        for gate in gates:
            gate.set()


def test_the_stream_follows_a_running_run_and_ends_with_it(
    talker: tuple[App, list[threading.Event]], store: Store, tokens: dict[str, Headers]
) -> None:
    app, gates = talker
    api = create_app(store, Settings.from_env(), stream_poll_seconds=0.05)
    received: list[Event] = []
    # The worker starts here, not in a fixture: pytest swaps sys.stdout between the setup
    # and call phases, which would bypass the worker's capture of print().
    with (
        in_process_worker(app, concurrency=1),
        serving(api) as base,
        httpx.Client(base_url=base, timeout=WAIT) as http,
    ):
        run = app.submit("talk")
        path = f"/api/v1/runs/{run.id}/logs/stream"
        with http.stream("GET", path, headers=tokens["viewer"]) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for event in events(response):
                received.append(event)
                if event.name == "log":
                    i = len(received) - 1
                    assert event.data["message"] == f"line {i}"
                    assert event.data["step"] == "speak"
                    # Still running: the line came live, not from a finished run's history.
                    assert store.get_run_status(run.id) == "running"
                    gates[i].set()
        # The stream closed by itself after the end event.
        assert [e.name for e in received] == ["log"] * LINES + ["end"], received
        assert received[-1].data == {"id": run.id, "status": "succeeded"}
        ids = [int(e.id) for e in received[:-1] if e.id is not None]
        assert ids == sorted(ids) and len(set(ids)) == LINES
        assert [e.data["id"] for e in received[:-1]] == ids

        # A client that reconnects with Last-Event-ID gets what followed, then the end.
        resume = {**tokens["viewer"], "Last-Event-ID": str(ids[1])}
        with http.stream("GET", path, headers=resume) as response:
            rest = list(events(response))
        assert [e.data.get("message") for e in rest[:-1]] == [f"line {i}" for i in range(2, LINES)]
        assert rest[-1].name == "end"

        # The stream is protected like every route.
        with http.stream("GET", path) as response:
            assert response.status_code == 401
            assert response.headers["content-type"].startswith("application/problem+json")
        with http.stream(
            "GET", "/api/v1/runs/no-such-run/logs/stream", headers=tokens["viewer"]
        ) as response:
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("application/problem+json")

        # The same lines, paged.
        page = http.get(
            f"/api/v1/runs/{run.id}/logs", params={"limit": 2}, headers=tokens["viewer"]
        )
        assert [line["message"] for line in page.json()["items"]] == ["line 0", "line 1"]
        after = page.json()["next_after"]
        page = http.get(
            f"/api/v1/runs/{run.id}/logs", params={"after": after}, headers=tokens["viewer"]
        )
        assert [line["message"] for line in page.json()["items"]] == [
            f"line {i}" for i in range(2, LINES)
        ]
        assert page.json()["next_after"] is None
