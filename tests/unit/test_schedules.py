"""Fire-time computation: cron in time zones across DST, intervals, one-time, validation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legato.errors import ConfigurationError
from legato.schedules import coerce, cron, every, once

ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "America/Santiago",
    "Europe/London",
]
EXPRS = [
    "30 * * * *",
    "*/15 * * * *",
    "0 2 * * *",
    "30 2 * * *",
    "0 1-3 * * *",
    "45 1 * * 0",
    "0 0 L * *",
    "0 12 28-31 * *",
    "@hourly",
    "@daily",
]


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    expr=st.sampled_from(EXPRS),
    start=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31)),
)
def test_fire_times_strictly_increase_and_match_the_wall_clock(
    zone: str, expr: str, start: datetime
) -> None:
    schedule = cron(expr, timezone=zone)
    begin = ms(start.replace(tzinfo=UTC))
    fires = schedule.fires_between(begin, begin + 40 * 86_400_000, limit=60)
    assert fires, "every expression fires within 40 days"
    assert fires[0] > begin
    assert all(a < b for a, b in itertools.pairwise(fires))
    # each fire's wall time matches the expression's minute (the DST shift keeps the minute)
    tz = ZoneInfo(zone)
    minutes = {datetime.fromtimestamp(f / 1000, tz).minute for f in fires}
    if expr.startswith("30 "):
        assert minutes == {30}


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Paris"])
def test_fall_back_wall_time_fires_once(zone: str) -> None:
    tz = ZoneInfo(zone)
    day = datetime(2026, 11, 1) if zone.startswith("America") else datetime(2026, 10, 25)
    repeated = "30 1 * * *" if zone.startswith("America") else "30 2 * * *"
    schedule = cron(repeated, timezone=zone)
    begin = ms(day.replace(tzinfo=tz) - timedelta(hours=6))
    fires = schedule.fires_between(begin, begin + 86_400_000)
    assert len(fires) == 1
    fired = datetime.fromtimestamp(fires[0] / 1000, tz)
    assert fired.fold == 0 and fired.replace(tzinfo=None).hour == int(repeated.split()[1])


def test_spring_forward_wall_time_fires_after_the_gap() -> None:
    tz = ZoneInfo("America/New_York")
    schedule = cron("30 2 * * *", timezone="America/New_York")  # 02:30 does not exist on 2026-03-08
    begin = ms(datetime(2026, 3, 7, 12, tzinfo=tz))
    fires = schedule.fires_between(begin, begin + 3 * 86_400_000)
    walls = [datetime.fromtimestamp(f / 1000, tz).strftime("%m-%d %H:%M") for f in fires]
    assert walls == ["03-08 03:30", "03-09 02:30", "03-10 02:30"]
    hourly = cron("30 * * * *", timezone="America/New_York")
    start = ms(datetime(2026, 3, 8, 0, 0, tzinfo=tz))
    hours = [
        datetime.fromtimestamp(f / 1000, tz).strftime("%H:%M")
        for f in hourly.fires_between(start, start + 4 * 3_600_000)
    ]
    assert hours == ["00:30", "01:30", "03:30", "04:30"]  # the skipped hour is not doubled


def test_month_end_expressions() -> None:
    begin = ms(datetime(2026, 1, 1, tzinfo=UTC))
    last = cron("0 23 L * *").fires_between(begin, ms(datetime(2026, 5, 1, tzinfo=UTC)))
    assert [datetime.fromtimestamp(f / 1000, UTC).day for f in last] == [31, 28, 31, 30]
    tail = cron("0 12 28-31 * *").fires_between(begin, ms(datetime(2026, 3, 1, tzinfo=UTC)))
    assert [datetime.fromtimestamp(f / 1000, UTC).strftime("%m-%d") for f in tail] == [
        "01-28",
        "01-29",
        "01-30",
        "01-31",
        "02-28",
    ]


def test_intervals_are_epoch_aligned_and_once_fires_once() -> None:
    schedule = every(minutes=5)
    assert schedule.next_fire(ms(datetime(2026, 1, 1, 10, 2, tzinfo=UTC))) == ms(
        datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    )
    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    one = once(at)
    assert one.fires_between(0, ms(at) + 10**9) == [ms(at)]
    assert one.next_fire(ms(at)) is None


def test_invalid_definitions_are_refused() -> None:
    for bad in ("61 * * * *", "* * * *", "*/5 * * * * *", "hourly"):
        with pytest.raises(ConfigurationError, match="invalid cron"):
            cron(bad)
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        cron("0 * * * *", timezone="Mars/Olympus")
    with pytest.raises(ConfigurationError):
        every()
    with pytest.raises(ConfigurationError, match="same name"):
        coerce(["0 * * * *", "0 * * * *"])
    assert [s.kind for s in coerce(["@daily", every(seconds=10)])] == ["cron", "interval"]


def test_jitter_is_deterministic_and_bounded() -> None:
    schedule = every(minutes=1, jitter=30)
    values = {schedule.jitter_ms("f:x", fire) for fire in range(0, 60_000 * 50, 60_000)}
    assert all(0 <= v < 30_000 for v in values) and len(values) > 1
    assert schedule.jitter_ms("f:x", 60_000) == schedule.jitter_ms("f:x", 60_000)
