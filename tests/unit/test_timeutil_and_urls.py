from __future__ import annotations

from datetime import timedelta

import pytest

from legato.errors import ConfigurationError
from legato.store.queries import Dialect, render
from legato.store.url import parse_url
from legato.timeutil import parse_duration, parse_iso, to_iso, to_ms


def test_durations() -> None:
    assert parse_duration("5m") == timedelta(minutes=5)
    assert parse_duration("250ms") == timedelta(milliseconds=250)
    assert parse_duration("2") == timedelta(seconds=2)
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("soon")


def test_iso_round_trip() -> None:
    ms = to_ms(parse_iso("2026-11-24T02:00:00.004Z"))
    assert to_iso(ms) == "2026-11-24T02:00:00.004Z"
    assert to_iso(to_ms(parse_iso("2026-11-24T03:00:00+01:00"))) == "2026-11-24T02:00:00.000Z"
    with pytest.raises(ValueError):
        parse_iso("yesterday")


def test_database_urls() -> None:
    assert parse_url("sqlite:///legato.db").path is not None
    pg = parse_url("postgresql://u:secret@h:5432/db?schema=s1&sslmode=disable")
    assert pg.schema == "s1" and pg.conninfo == "postgresql://u:secret@h:5432/db?sslmode=disable"
    assert "secret" not in pg.redacted()
    assert parse_url("postgres://h/db").schema == "legato"
    for bad in (
        "mysql://h/db",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql://h/db?schema=Bad-Name",
    ):
        with pytest.raises(ConfigurationError):
            parse_url(bad)


def test_render_converts_parameters_but_not_casts() -> None:
    dialect = Dialect(now="now()", skip_locked="", lock_schedules="", pyformat=True)
    assert render("SELECT :a, x::bigint, '%' FROM t WHERE {now} > :b", dialect) == (
        "SELECT %(a)s, x::bigint, '%%' FROM t WHERE now() > %(b)s"
    )
