"""The scheduler against real databases, with an injected clock; exactly-once across processes."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from legato import App
from legato.client import Client
from legato.scheduler import Scheduler
from legato.schedules import cron, every
from legato.store import RunFilter, Store
from tests.helpers import cli_json, run_cli, wait_for, worker_process

DAY_MS = 86_400_000
T0 = int(datetime(2026, 11, 24, tzinfo=UTC).timestamp() * 1000)


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def registered(db_url: str, clock: Clock, **flow_options: object) -> tuple[App, Store]:
    """An app with one scheduled flow ``job``, registered as of the clock's time."""
    app = App(db_url)

    @app.flow(**flow_options)  # type: ignore[call-overload]
    def job() -> None:
        return None

    store = app.store
    real_now = store.now_ms
    store.now_ms = clock  # type: ignore[method-assign]
    app.register()
    store.now_ms = real_now  # type: ignore[method-assign]
    return app, store


def scheduled_for(store: Store) -> list[int]:
    return sorted(r["scheduled_for"] for r in store.list_runs(RunFilter(limit=10_000)))


def test_a_day_of_fires_in_milliseconds(db_url: str) -> None:
    clock = Clock(T0)
    app, store = registered(db_url, clock, schedule=every(minutes=5))
    scheduler = Scheduler(store, clock=clock)
    for _ in range(24 * 12):
        clock.now += 300_000
        assert scheduler.tick() == 1
        assert scheduler.tick() == 0  # a second pass at the same time fires nothing
    fires = scheduled_for(store)
    assert fires == [T0 + 300_000 * i for i in range(1, 24 * 12 + 1)]
    runs = store.list_runs(RunFilter(limit=1))
    assert runs[0]["trigger"] == "schedule" and runs[0]["schedule_id"].startswith("job:")
    app.close()


def test_two_schedulers_fire_each_time_once(db_url: str) -> None:
    clock = Clock(T0)
    app, store = registered(db_url, clock, schedule=[every(minutes=1), cron("*/2 * * * *")])
    a, b = Scheduler(store, clock=clock), Scheduler(store, clock=clock)
    for _ in range(30):
        clock.now += 60_000
        a.tick()
        b.tick()
    keys = Counter(r["idempotency_key"] for r in store.list_runs(RunFilter(limit=10_000)))
    assert len(keys) == 30 + 15 and set(keys.values()) == {1}
    app.close()


@pytest.mark.parametrize(("policy", "expected"), [("skip", 0), ("once", 1), ("all", 12)])
def test_catch_up_after_downtime(db_url: str, policy: str, expected: int) -> None:
    clock = Clock(T0)
    app, store = registered(db_url, clock, schedule=every(minutes=5, catchup=policy))  # type: ignore[arg-type]
    clock.now += 3_600_000 + 61_000  # an hour of downtime: 12 fires missed (past the grace)
    created = Scheduler(store, clock=clock).tick()
    assert created == expected
    if policy == "once":
        assert scheduled_for(store) == [T0 + 3_600_000]  # the latest missed fire
    (row,) = store.list_schedules()
    assert row["next_fire_at"] == T0 + 3_600_000 + 300_000
    app.close()


def test_catch_up_all_is_bounded_by_its_window(db_url: str) -> None:
    clock = Clock(T0)
    app, store = registered(
        db_url, clock, schedule=every(minutes=5, catchup="all", catchup_window=1800)
    )
    clock.now += 3_600_000
    assert Scheduler(store, clock=clock).tick() == 7  # fires at 30, 35, ... 60 minutes
    app.close()


@pytest.mark.parametrize(("policy", "expected"), [("allow", 3), ("skip", 1), ("queue", 2)])
def test_overlap_policies(db_url: str, policy: str, expected: int) -> None:
    clock = Clock(T0)
    app, store = registered(db_url, clock, schedule=every(minutes=1, overlap=policy))  # type: ignore[arg-type]
    scheduler = Scheduler(store, clock=clock)
    clock.now += 60_000
    scheduler.tick()
    store.claim("w", ["default"], 1, 60_000)  # the first run is now running
    for _ in range(2):
        clock.now += 60_000
        scheduler.tick()
    assert len(store.list_runs(RunFilter())) == expected
    app.close()


def test_pause_stops_fires_and_resume_follows_the_catch_up_policy(db_url: str) -> None:
    clock = Clock(T0)
    app, store = registered(db_url, clock, schedule=every(minutes=1, catchup="skip"))
    client = Client(store)
    scheduler = Scheduler(store, clock=clock)
    client.set_paused("job", True)
    assert client.schedules()[0]["paused"]
    for _ in range(5):
        clock.now += 60_000
        assert scheduler.tick() == 0
    assert client.upcoming(clock.now + 3_600_000) == []
    client.set_paused("job", False)
    clock.now += 61_000  # resume: the missed fires are not run (catchup="skip")
    assert scheduler.tick() == 1
    assert scheduled_for(store) == [T0 + 6 * 60_000]
    app.close()


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_upcoming_until_the_end_of_the_month(db_url: str) -> None:
    app = App(db_url)

    @app.flow(schedule=cron("0 23 L * *"))
    def month_end() -> None: ...

    @app.flow(schedule=cron("0 6 28-31 * *", timezone="Europe/Paris"))
    def late_month() -> None: ...

    app.register()
    now = app.store.now_ms()
    now_dt = datetime.fromtimestamp(now / 1000, UTC)
    year, month = (now_dt.year + 1, 1) if now_dt.month == 12 else (now_dt.year, now_dt.month + 1)
    until = datetime(year, month, 1, tzinfo=UTC)
    fires = cli_json(["schedules", "upcoming", "--until", until.isoformat()], app.database_url)
    assert fires == sorted(fires, key=lambda f: f["fire_at"])
    last_day = (until - timedelta(days=1)).day
    month_end_fires = [f["fire_at"] for f in fires if f["flow"] == "month_end"]
    month_end_at = datetime(now_dt.year, now_dt.month, last_day, 23, tzinfo=UTC)
    assert month_end_fires == ([_iso(month_end_at)] if month_end_at > now_dt else [])
    paris = ZoneInfo("Europe/Paris")
    expected_late = [
        _iso(moment.astimezone(UTC))
        for day in range(28, last_day + 1)
        if (moment := datetime(now_dt.year, now_dt.month, day, 6, tzinfo=paris)) > now_dt
    ]
    assert [f["fire_at"] for f in fires if f["flow"] == "late_month"] == expected_late
    only = cli_json(
        ["schedules", "upcoming", "--flow", "month_end", "--until", until.isoformat()],
        app.database_url,
    )
    assert {f["flow"] for f in only} <= {"month_end"}
    bad = run_cli(["schedules", "upcoming", "--until", "end of month"], app.database_url)
    assert bad.returncode == 1 and bad.stderr.startswith("error:")
    app.close()


def test_backfill_creates_each_fire_once(db_url: str) -> None:
    app = App(db_url)

    @app.flow(schedule=cron("0 * * * *"))
    def hourly() -> None: ...

    app.register()
    args = [
        "schedules",
        "backfill",
        "hourly",
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        "2026-01-01T05:30:00Z",
    ]
    first = cli_json(args, app.database_url)
    second = cli_json(args, app.database_url)
    assert len(first) == 6 and all(r["created"] for r in first)
    assert [r["id"] for r in second] == [r["id"] for r in first]
    assert not any(r["created"] for r in second)
    app.close()


@pytest.mark.timeout(90)
def test_three_worker_processes_fire_each_second_exactly_once(db_url: str) -> None:
    workers = [
        worker_process(
            "tests/flows/ticking.py", db_url, concurrency=2, env={"LEGATO_SCHEDULER_SECONDS": "0.2"}
        )
        for _ in range(3)
    ]
    procs = [w.__enter__() for w in workers]
    try:
        client_db = db_url
        wait_for(lambda: len(cli_json(["workers", "list"], client_db)) == 3, timeout=30)
        wait_for(
            lambda: len(cli_json(["runs", "list", "--limit", "1000"], client_db)) >= 12,
            timeout=60,
            interval=0.5,
        )
    finally:
        for p in procs:
            p.terminate()
        for w in workers:
            w.__exit__(None, None, None)
    runs = cli_json(["runs", "list", "--limit", "1000"], db_url)
    fire_times = Counter(r["scheduled_for"] for r in runs)
    assert len(runs) >= 12
    assert set(fire_times.values()) == {1}, "a fire time created more than one run"
    times = sorted(fire_times)
    assert all(t.endswith(".000Z") for t in times)
