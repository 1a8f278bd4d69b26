"""The nine questions of SPEC §4, each answered by one HTTP call, about runs made by real
workers (the same ``Worker`` as ``legato worker``, in threads of this process).

Two workers: ``w1`` serves ``default``, ``w2`` serves ``default`` and ``reports``. Runs that
must stay in flight wait on :class:`threading.Event`s the test sets (no sleeps).
"""

from __future__ import annotations

import calendar
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from legato import App, RetryPolicy
from legato.api import create_app
from legato.app import RunHandle
from legato.config import Settings
from legato.store import Store
from tests.helpers import in_process_worker, wait_for

from .conftest import Headers

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

API = "/api/v1"
WAIT = 60.0  # generous: the machine is shared


@dataclass
class Scene:
    """Runs made by real workers, and the API (viewer token) to ask about them."""

    http: TestClient
    viewer: Headers
    ok: list[RunHandle]
    failed: RunHandle
    busy: RunHandle
    report: RunHandle
    workers: dict[str, str]  # "w1" / "w2" -> worker id
    started: float  # epoch seconds before the first run was submitted
    release: threading.Event = field(default_factory=threading.Event)

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(API + path, params=params, headers=self.viewer)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()


@pytest.fixture
def scene(db_url: str, store: Store, tokens: dict[str, Headers]) -> Iterator[Scene]:
    app = App(db_url)
    app.use_store(store)
    release = threading.Event()
    report_release = threading.Event()
    busy_in_step = threading.Event()

    @app.step
    def extract(day: str) -> list[int]:
        logging.info("extracting %s", day)
        return [1, 2, 3]

    @app.step(retries=RetryPolicy(attempts=2, backoff="fixed", delay=0.01))
    def transform(rows: list[int], bad: int | None) -> list[int]:
        if bad is not None:
            raise ValueError(f"bad row {bad}")
        return [r * 10 for r in rows]

    @app.flow(retries=RetryPolicy(attempts=3, backoff="fixed", delay=0.01))
    def nightly_import(day: str, bad: int | None = None) -> int:
        return sum(transform(extract(day), bad))

    @app.step
    def crunch() -> int:
        busy_in_step.set()
        assert release.wait(WAIT), "the test never released the busy run"
        return 1

    @app.flow
    def long_job() -> int:
        return crunch()

    @app.flow(queue="reports")
    def weekly_report() -> str:
        assert report_release.wait(WAIT), "the test never released the report"
        return "done"

    @app.flow(schedule="0 23 L * *", description="Closes the books on the last day, 23:00 UTC")
    def month_end() -> None:
        pass

    @app.flow(schedule="30 6 1 * *")
    def month_start() -> None:
        pass

    started = time.time()
    with (
        in_process_worker(app, queues=["default"], concurrency=2) as w1,
        in_process_worker(app, queues=["default", "reports"], concurrency=2) as w2,
    ):
        ok = [nightly_import.submit(f"2026-11-{d:02d}") for d in (1, 2, 3)]
        for handle in ok:
            handle.wait(timeout=WAIT)
        failed = nightly_import.submit("2026-11-24", bad=17)  # the latest, by far
        failed.wait(timeout=WAIT)
        busy = long_job.submit()
        report = weekly_report.submit()
        assert busy_in_step.wait(WAIT)
        wait_for(lambda: report.status() == "running", timeout=WAIT, message="report running")
        api = create_app(store, Settings.from_env())
        try:
            with TestClient(api) as http:
                yield Scene(
                    http=http,
                    viewer=tokens["viewer"],
                    ok=ok,
                    failed=failed,
                    busy=busy,
                    report=report,
                    workers={"w1": w1.id, "w2": w2.id},
                    started=started,
                    release=release,
                )
        finally:
            release.set()
            report_release.set()


def test_the_nine_questions(scene: Scene) -> None:
    # 1. Did flow X succeed or fail? The latest run of the flow, and its status.
    latest = scene.get("/runs", flow="nightly_import", limit=1)["items"][0]
    assert latest["id"] == scene.failed.id
    assert latest["status"] == "failed"
    flows = {f["name"]: f for f in scene.get("/flows")}
    assert flows["nightly_import"]["last_status"] == "failed"
    assert flows["nightly_import"]["last_run"]["id"] == scene.failed.id
    succeeded = scene.get("/runs", flow="nightly_import", status="succeeded")["items"]
    assert {r["id"] for r in succeeded} == {h.id for h in scene.ok}

    # 2. Why did it fail? 3. Which step threw, with what stack trace?
    # 4. How many attempts? 5. When did it start and stop? All in one call.
    run = scene.get(f"/runs/{scene.failed.id}")
    assert run["error"] == "ValueError: bad row 17"
    assert run["failed_step"] == "transform"
    assert "Traceback (most recent call last)" in run["traceback"]
    assert 'raise ValueError(f"bad row {bad}")' in run["traceback"]
    assert "in transform" in run["traceback"]
    steps = {s["name"]: s for s in run["steps"]}
    assert steps["extract"]["status"] == "succeeded"
    assert steps["transform"]["status"] == "failed"
    assert steps["transform"]["error"] == "ValueError: bad row 17"
    assert "in transform" in steps["transform"]["traceback"]
    assert steps["transform"]["attempts"] == 6  # 2 tries (its own policy) in each of 3 runs
    assert run["attempts"] == run["max_attempts"] == 3
    assert [e["status"] for e in run["events"]].count("running") == 3
    started, finished = parse(run["started_at"]), parse(run["finished_at"])
    assert scene.started - 5 <= started.timestamp() <= finished.timestamp() <= time.time() + 5
    assert run["duration_ms"] == round((finished - started).total_seconds() * 1000)
    # The step that succeeded is checkpointed: it logged in the first attempt only.
    logs = scene.get(f"/runs/{scene.failed.id}/logs")["items"]
    extract_lines = {(ln["attempt"], ln["message"]) for ln in logs if ln["step"] == "extract"}
    assert extract_lines == {(1, "extracting 2026-11-24")}

    # 6. Which flows are scheduled at the end of the month?
    now = datetime.now(UTC)
    last_day = calendar.monthrange(now.year, now.month)[1]
    month_end = datetime(now.year, now.month, last_day, 23, 0, tzinfo=UTC)
    if month_end <= now:  # the last evening of the month: ask about next month
        nxt = (now.replace(day=1) + timedelta(days=32)).replace(day=1)
        last_day = calendar.monthrange(nxt.year, nxt.month)[1]
        month_end = datetime(nxt.year, nxt.month, last_day, 23, 0, tzinfo=UTC)
    fires = scene.get("/schedules/upcoming", until=iso(month_end + timedelta(hours=1)))
    assert fires == sorted(fires, key=lambda f: f["fire_at"])
    on_last_day = [f for f in fires if f["fire_at"].startswith(month_end.date().isoformat())]
    assert on_last_day == [
        {"flow": "month_end", "schedule": "cron 0 23 L * *", "fire_at": iso(month_end)}
    ]
    assert flows["month_end"]["next_fire_at"] == iso(month_end)
    assert flows["month_start"]["next_fire_at"] not in (None, iso(month_end))

    # 7. How many flows succeeded in the last 5 minutes?
    stats = scene.get("/stats", since="5m")
    assert stats["counts"]["succeeded"] == 3
    assert stats["counts"]["failed"] == 1
    assert stats["by_flow"]["nightly_import"] == {"succeeded": 3, "failed": 1, "cancelled": 0}
    assert stats["counts"]["running"] == 2  # active now: the busy run and the report
    series = scene.get("/stats/series", since="5m")
    assert sum(p["counts"].get("succeeded", 0) for p in series["series"]) == 3

    # 8. What is the status of flow X now? Its latest run is running, inside step `crunch`.
    flow = scene.get("/flows/long_job")
    assert flow["last_status"] == "running"
    assert flow["last_run"]["id"] == scene.busy.id
    busy = scene.get(f"/runs/{scene.busy.id}")
    assert busy["status"] == "running" and busy["finished_at"] is None
    assert busy["worker"] in scene.workers.values()
    assert [(s["name"], s["status"]) for s in busy["steps"]] == [("crunch", "running")]
    running = scene.get("/runs", status="running")["items"]
    assert {r["id"] for r in running} == {scene.busy.id, scene.report.id}

    # 9. How many queues, which workers serve them, is the load balanced?
    w1, w2 = scene.workers["w1"], scene.workers["w2"]
    queues = {q["name"]: q for q in scene.get("/queues")}
    assert set(queues) == {"default", "reports"}
    assert sorted(queues["default"]["workers"]) == sorted([w1, w2])
    assert queues["reports"]["workers"] == [w2]
    assert queues["reports"]["running"] == 1 and queues["reports"]["queued"] == 0
    assert queues["default"]["running"] == 1

    def heartbeats_counted() -> dict[str, Any] | None:
        live = {w["id"]: w for w in scene.get("/workers") if w["alive"]}
        total = sum(live[w]["running"] for w in (w1, w2) if w in live)
        return live if len(live) == 2 and total == 2 else None

    workers = wait_for(heartbeats_counted, timeout=WAIT, message="both workers' heartbeats")
    assert workers[w1]["queues"] == ["default"]
    assert workers[w2]["queues"] == ["default", "reports"]
    assert workers[w1]["concurrency"] == workers[w2]["concurrency"] == 2
    assert scene.get(f"/runs/{scene.report.id}")["worker"] == w2

    # When the busy run is released, the answer to question 8 changes.
    scene.release.set()
    scene.busy.wait(timeout=WAIT)
    assert scene.get("/flows/long_job")["last_status"] == "succeeded"


def test_metrics_describe_runs_queues_and_workers(scene: Scene) -> None:
    response = scene.http.get("/metrics", headers=scene.viewer)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_metrics(response.text)
    assert samples['legato_runs{flow="nightly_import",status="succeeded"}'] == 3
    assert samples['legato_runs{flow="nightly_import",status="failed"}'] == 1
    assert samples["legato_runs_running"] == 2
    assert samples['legato_queue_running{queue="reports"}'] == 1
    assert samples['legato_queue_depth{queue="default"}'] == 0
    assert samples['legato_queue_workers{queue="default"}'] == 2
    assert samples['legato_queue_oldest_age_seconds{queue="default"}'] == 0
    assert samples["legato_workers_alive"] == 2
    for worker in scene.workers.values():
        assert samples[f'legato_worker_slots{{worker="{worker}"}}'] == 2
    assert samples['legato_claim_latency_seconds{quantile="0.5"}'] >= 0
    assert samples["legato_claim_latency_seconds_count"] == 3  # first attempts that ended
    lags = [v for k, v in samples.items() if k.startswith("legato_schedule_lag_seconds{")]
    assert len(lags) == 2 and all(lag == 0 for lag in lags)
    # Every family is documented (HELP and TYPE) once.
    names = {k.split("{")[0] for k in samples}
    for name in names:
        family = name.removesuffix("_count").removesuffix("_sum")
        assert response.text.count(f"# TYPE {family} ") == 1, family


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )
