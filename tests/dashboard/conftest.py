"""Fixtures of the dashboard tests: example flows on a real worker, the API + dashboard on a
real uvicorn server, and Debian's Chromium driven by Playwright.

Screenshots of every page go to ``artifacts/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from legato import App, RetryPolicy, cron, every
from legato.api import create_app
from legato.client import Client
from legato.config import Settings
from legato.store import RunFilter
from tests.helpers import ROOT, in_process_worker, serving, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
log = logging.getLogger("tests.dashboard")


def build_app(db_url: str, stopping: threading.Event | None = None) -> App:
    """Flows that give every page something to show: logs, a failing step, retries, a slow
    run to cancel, and schedules. Once ``stopping`` is set, slow runs end at their next tick
    (so no run thread outlives its test)."""
    app = App(db_url)
    stopping = stopping or threading.Event()

    @app.step
    def fetch(n: int) -> list[int]:
        log.info("fetching %d items", n)
        return list(range(1, n + 1))

    @app.step
    def total(items: list[int]) -> int:
        log.info("sum is %d", sum(items))
        return sum(items)

    @app.flow(description="Adds the numbers 1 to n", schedule=every(hours=6))
    def add_up(n: int = 3) -> int:
        return total(fetch(n))

    @app.step
    def explode(x: int) -> int:
        raise ValueError(f"bad value {x}")

    @app.flow(
        description="Always fails in step explode",
        retries=RetryPolicy(attempts=2, backoff="fixed", delay=0),
    )
    def doomed(x: int = 7) -> int:
        log.warning("about to fail with x=%d", x)
        return explode(x)

    @app.step
    def tick(i: int) -> int:
        if stopping.is_set():
            raise RuntimeError("the test is over")
        time.sleep(0.2)
        log.info("tick %d", i)
        return i

    @app.flow(description="A slow flow to watch and cancel")
    def slow(ticks: int = 300) -> int:
        return sum(tick(i) for i in range(ticks))

    @app.flow(
        description="Closes the books on the last day of the month",
        schedule=cron("0 22 L * *", timezone="Europe/Paris"),
    )
    def month_end() -> str:
        return "closed"

    return app


@dataclass
class Dashboard:
    url: str
    app: App
    client: Client
    extra: dict[str, Any] = field(default_factory=dict)

    def flow(self, name: str) -> Any:
        return self.app.flows[name]

    def wait_status(self, run_id: str, *statuses: str, timeout: float = 60) -> str:
        return wait_for(
            lambda: s if (s := self.client.store.get_run_status(run_id)) in statuses else None,
            timeout=timeout,
            interval=0.1,
            message=f"run {run_id} to be {' or '.join(statuses)}",
        )


@contextmanager
def running_dashboard(db_url: str, *, require_auth: bool = False) -> Iterator[Dashboard]:
    stopping = threading.Event()
    app = build_app(db_url, stopping)
    try:
        with in_process_worker(app, concurrency=4):
            try:
                api = create_app(app.store, Settings.from_env(), require_auth=require_auth)
                with serving(api) as url:
                    yield Dashboard(url, app, Client(app.store, app.settings))
            finally:
                # End what still runs before the worker stops, so that no run thread is
                # left behind using a closed store.
                stopping.set()
                with contextlib.suppress(AssertionError):
                    wait_for(
                        lambda: not app.store.list_runs(RunFilter(status="running", limit=1)),
                        timeout=20,
                        interval=0.1,
                        message="running runs to end",
                    )
    finally:
        app.close()


@pytest.fixture
def dashboard(db_url: str) -> Iterator[Dashboard]:
    """The dashboard over a fresh database (SQLite and PostgreSQL) with a running worker."""
    with running_dashboard(db_url) as d:
        yield d


@pytest.fixture
def sqlite_dashboard(sqlite_url: str) -> Iterator[Dashboard]:
    """The dashboard over a fresh SQLite database with a running worker."""
    with running_dashboard(sqlite_url) as d:
        yield d


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("/usr/bin/chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class Page:
    """A browser tab that records console errors and takes screenshots."""

    def __init__(self, context: Any, base: str) -> None:
        self.context = context
        self.base = base
        self.tab = context.new_page()
        self.tab.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.tab.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.tab.on("pageerror", lambda e: self.errors.append(str(e)))

    def go(self, path: str) -> Any:
        response = self.tab.goto(self.base + path, wait_until="load")
        assert response is not None
        return response

    def shot(self, name: str, *, full_page: bool = True) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)

    def no_errors(self) -> None:
        assert not self.errors, f"console errors: {self.errors}"


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """``open_page(base_url, width=1280)`` -> a new tab; console errors fail the test."""
    pages: list[Page] = []
    contexts: list[Any] = []

    def make(base: str, width: int = 1280, height: int = 900, zone: str = "Europe/Paris") -> Page:
        context = browser.new_context(
            viewport={"width": width, "height": height}, timezone_id=zone, locale="en-GB"
        )
        contexts.append(context)
        page = Page(context, base)
        pages.append(page)
        return page

    yield make
    errors = [e for p in pages for e in p.errors]
    for c in contexts:
        c.close()
    assert not errors, f"console errors: {errors}"
