"""Fixtures of the chaos suite: a private PostgreSQL server, and workers that are killed.

The suite runs in CI in a bounded form; ``LEGATO_CHAOS_SCALE`` (default 1) multiplies its
sizes (runs, faults) for a longer soak, e.g. ``LEGATO_CHAOS_SCALE=3`` for the 1,000-run,
20-round figures of issue 10.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.chaos.checks import FIGURES
from tests.chaos.postgres_server import PrivateServer
from tests.conftest import PG_URL, REQUIRE_PG
from tests.helpers import WorkerProcess

SCALE = float(os.environ.get("LEGATO_CHAOS_SCALE", "1"))
CHAOS_APP = "tests/flows/chaos.py"


def scaled(n: int) -> int:
    return max(1, round(n * SCALE))


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivateServer]:
    """A PostgreSQL server of this module's own, which its tests restart and cut off."""
    if not PG_URL and not REQUIRE_PG:
        pytest.skip("LEGATO_TEST_POSTGRES_URL is not set: PostgreSQL chaos tests skipped")
    try:
        server = PrivateServer()
    except (RuntimeError, OSError) as exc:
        if REQUIRE_PG:
            pytest.fail(f"cannot start a private PostgreSQL server: {exc}")
        pytest.skip(f"cannot start a private PostgreSQL server: {exc}")
    yield server
    server.close()


@pytest.fixture
def private_pg_url(private_pg: PrivateServer) -> str:
    """A schema of its own on the private server."""
    return f"{private_pg.url}?schema=c_{uuid.uuid4().hex[:12]}"


class Workers:
    """Worker processes of one test, each logging to its own file; killed ones are kept
    for their logs."""

    def __init__(self, db_url: str, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.db_url = db_url
        self.tmp_path = tmp_path
        self.env = env or {}
        self.all: list[WorkerProcess] = []

    def start(
        self, concurrency: int = 4, app: str = CHAOS_APP, queues: Sequence[str] = ()
    ) -> WorkerProcess:
        log = self.tmp_path / f"worker-{len(self.all) + 1}.log"
        worker = WorkerProcess(
            app, self.db_url, concurrency=concurrency, env=self.env, log_path=log, queues=queues
        )
        self.all.append(worker)
        return worker

    @property
    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.all if w.proc.poll() is None]

    def logs(self, tail: int = 60) -> str:
        parts = []
        for w in self.all:
            lines = w.output().splitlines()[-tail:]
            parts.append(f"--- worker {w.pid} (exit {w.proc.poll()}) ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def close(self) -> None:
        for worker in self.all:
            worker.close()


@pytest.fixture
def workers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    """``workers(db_url, env=None)``: a group of worker processes, closed after the test
    (their logs are printed when it failed)."""
    made: list[Workers] = []

    def make(db_url: str, env: dict[str, str] | None = None) -> Workers:
        group = Workers(db_url, tmp_path, env)
        made.append(group)
        return group

    yield make
    failed = getattr(request.node, "report_call", None)
    for group in made:
        if failed is not None and failed.failed:
            print(group.logs())
        group.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("chaos: what was survived")
        for line in FIGURES:
            terminalreporter.write_line(line)
