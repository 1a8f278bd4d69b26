"""The dashboard's helpers without a browser: durations, the calendar, attempts, pages' HTTP."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

import pytest

from legato import App, cron
from legato.api import create_app
from legato.client import Client
from legato.dashboard import calendar, timeline
from legato.dashboard.render import duration, query, schedule_text
from legato.store import Store

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "—"),
        (0, "0 ms"),
        (850, "850 ms"),
        (1234, "1.2 s"),
        (42_000, "42 s"),
        (245_000, "4 min 05 s"),
        (7_380_000, "2 h 03 min"),
        (3 * 86_400_000 + 4 * 3_600_000, "3 d 4 h"),
    ],
)
def test_durations_read_like_a_person_would_say_them(ms: float | None, text: str) -> None:
    assert duration(ms) == text


def test_interval_schedules_are_described_in_human_units() -> None:
    assert schedule_text("every 21600s") == "every 6 h"
    assert schedule_text("every 60s") == "every 1 min"
    assert schedule_text("every 90s") == "every 90 s"
    assert schedule_text("cron 0 2 * * *") == "cron 0 2 * * *"


def test_query_strings_leave_out_empty_filters() -> None:
    assert query({"flow": "etl", "status": ""}, cursor="abc") == "?flow=etl&cursor=abc"
    assert query({"flow": ""}) == ""


def test_month_view_puts_the_month_end_fire_on_the_last_day(sqlite_url: str) -> None:
    app = App(sqlite_url)

    @app.flow(schedule=cron("0 22 L * *", timezone="Europe/Paris"))
    def month_end() -> None: ...

    app.register()
    client = Client(app.store)
    paris = calendar.zone("Europe/Paris")
    fire = client.upcoming(client.store.now_ms() + 40 * 86_400_000)[0]
    fire_local = datetime.fromisoformat(fire["fire_at"].replace("Z", "+00:00")).astimezone(paris)
    assert fire_local.hour == 22
    month = calendar.build(client, "month", fire_local.date(), paris)
    days = {c.day: c for c in month.cells}
    assert [g.flow for g in days[fire_local.date()].groups] == ["month_end"]
    assert sum(c.count for c in month.cells) == 1
    assert all(len(week) == 7 for week in month.weeks)
    week = calendar.build(client, "week", fire_local.date(), paris)
    assert len(week.cells) == 7 and sum(c.count for c in week.cells) == 1
    day = calendar.build(client, "day", fire_local.date(), paris)
    assert [c.count for c in day.cells if c.count] == [1] and day.cells[22].count == 1
    # An unknown zone name falls back to UTC rather than failing.
    assert calendar.zone("Mars/Olympus").key == "UTC"
    assert calendar.zone("../../etc/passwd").key == "UTC"
    app.close()


def test_attempts_tell_a_retry_from_a_hand_back() -> None:
    def event(ts: int, status: str, attempt: int) -> dict[str, object]:
        iso = datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
        return {"ts": iso, "status": status, "attempt": attempt, "worker": "w1"}

    run = {
        "status": "succeeded",
        "error": None,
        "finished_at": None,
        "failed_step": None,
        "steps": [],
        "events": [
            event(0, "queued", 0),
            event(1, "running", 1),
            event(3, "queued", 1),  # handed back: the same attempt goes on
            event(4, "running", 1),
            event(6, "queued", 1),  # failed: the next attempt is number 2
            event(7, "running", 2),
            event(9, "succeeded", 2),
        ],
    }
    run["finished_at"] = event(9, "succeeded", 2)["ts"]
    tries = timeline.attempts(run)
    assert [(a.number, a.outcome) for a in tries] == [
        (1, "handed back or recovered"),
        (1, "failed, retried"),
        (2, "succeeded"),
    ]
    assert [a.duration_ms for a in tries] == [2000, 2000, 2000]
    chart = timeline.build(run, tries, now_ms=10_000)
    assert chart is not None and chart.span_ms == 8000
    assert [b.status for b in chart.rows[0].bars] == ["queued", "failed", "succeeded"]


def test_a_step_run_again_in_a_later_attempt_is_drawn_per_attempt() -> None:
    """The retry delay between two attempts is not drawn as the step running."""

    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")

    run = {
        "status": "succeeded",
        "error": None,
        "finished_at": iso(10),
        "failed_step": None,
        "events": [
            {"ts": iso(0), "status": "queued", "attempt": 0, "worker": None},
            {"ts": iso(1), "status": "running", "attempt": 1, "worker": "w1"},
            {"ts": iso(3), "status": "retrying", "attempt": 1, "worker": "w1"},
            {"ts": iso(8), "status": "running", "attempt": 2, "worker": "w1"},
            {"ts": iso(10), "status": "succeeded", "attempt": 2, "worker": "w1"},
        ],
        "steps": [
            # One record for the step: first started in attempt 1, finished in attempt 2.
            {"name": "publish", "status": "succeeded", "attempts": 2, "started_at": iso(2),
             "finished_at": iso(9)},
            {"name": "done", "status": "succeeded", "attempts": 1, "started_at": iso(9),
             "finished_at": iso(10)},
        ],
    }  # fmt: skip
    tries = timeline.attempts(run)
    chart = timeline.build(run, tries, now_ms=20_000)
    assert chart is not None and chart.span_ms == 9000
    publish, done = chart.rows[1], chart.rows[2]
    assert [b.status for b in publish.bars] == ["failed", "succeeded"]
    first, second = publish.bars
    # 2 s..3 s in attempt 1, then 8 s..9 s in attempt 2: nothing drawn during the delay.
    assert (first.left, first.width) == (round(100 / 9, 3), round(100 / 9, 3))
    assert (second.left, second.width) == (round(700 / 9, 3), round(100 / 9, 3))
    assert "attempt 1: failed" in first.title and "attempt 2: succeeded" in second.title
    assert len(done.bars) == 1 and done.bars[0].status == "succeeded"
    # The steps list says how long it ran (1 s + 1 s), not the 7 s from first start to finish.
    assert timeline.step_running_ms(run["steps"][0], tries, now_ms=20_000) == 2000
    assert timeline.step_running_ms(run["steps"][1], tries, now_ms=20_000) is None


def test_pages_answer_html_with_a_strict_content_security_policy(store: Store) -> None:
    """Every page (and the fragments htmx polls) on both backends, without a browser."""
    with TestClient(create_app(store)) as http:
        for path in (
            "/",
            "/overview/live",
            "/flows",
            "/runs",
            "/runs?fragment=table",
            "/schedule",
            "/schedule?view=week",
            "/schedule?view=day&day=2026-11-30",
            "/workers",
            "/workers/live",
        ):
            answer = http.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert http.get("/static/vendor/htmx-2.0.11.min.js").status_code == 200
        assert http.get("/flows/nope").status_code == 404
        assert http.get("/runs/nope").status_code == 404
        assert http.get("/runs?status=bogus").status_code == 200  # explained on the page
        assert "unknown status" in http.get("/runs?status=bogus").text
        assert http.get("/api/v1/flows").status_code == 200  # the API is still there
