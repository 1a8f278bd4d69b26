"""Schedule definitions and fire-time computation (pure functions, no database).

Three kinds: :func:`cron` (5-field cron or a preset, in a time zone), :func:`every` (a fixed
interval) and :func:`once` (one moment). A plain string given to ``@app.flow(schedule=...)``
is a UTC cron.

**Time zones and daylight saving.** Cron expressions are matched against *wall-clock* time in
the schedule's zone, then converted to UTC:

- a wall time that occurs twice when clocks fall back fires **once**, at its first occurrence;
- a wall time that does not exist when clocks spring forward fires at the same distance past
  the transition (``02:30`` on a day that jumps from ``02:00`` to ``03:00`` fires at ``03:30``
  wall time), unless that instant is already a fire time, in which case it is not repeated;
- consecutive fire times are therefore strictly increasing.

**Policies** (per schedule):

- ``catchup`` — fires missed while no worker was running (older than ``misfire_grace``):
  ``"skip"`` drops them, ``"once"`` (default) runs the latest one once, ``"all"`` runs each one
  within ``catchup_window`` (default one day);
- ``overlap`` — when the previous run of the schedule is still going: ``"allow"`` (default)
  starts anyway, ``"skip"`` drops the fire, ``"queue"`` keeps at most one run waiting;
- ``jitter`` — seconds of delay spread over ``[0, jitter)``, the same for every worker.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .errors import ConfigurationError

Catchup = Literal["skip", "once", "all"]
Overlap = Literal["allow", "skip", "queue"]
PRESETS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_MAX_STEPS = 100_000


@dataclass(frozen=True)
class Schedule:
    """A recurring or one-time trigger of a flow. Build with :func:`cron`, :func:`every`,
    :func:`once`."""

    kind: Literal["cron", "interval", "once"]
    expr: str | None = None
    timezone: str = "UTC"
    interval_s: float | None = None
    at_ms: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    catchup: Catchup = "once"
    catchup_window_s: float = 86_400.0
    misfire_grace_s: float = 60.0
    overlap: Overlap = "allow"
    jitter_s: float = 0.0
    name: str | None = None

    def __post_init__(self) -> None:
        if self.catchup not in ("skip", "once", "all"):
            raise ConfigurationError(f"unknown catchup policy {self.catchup!r}")
        if self.overlap not in ("allow", "skip", "queue"):
            raise ConfigurationError(f"unknown overlap policy {self.overlap!r}")
        if self.jitter_s < 0 or self.catchup_window_s < 0 or self.misfire_grace_s < 0:
            raise ConfigurationError("jitter, catchup_window and misfire_grace must be >= 0")
        if self.kind == "cron":
            validate_cron(self.expr or "")
            zone(self.timezone)
        elif self.kind == "interval" and not (self.interval_s and self.interval_s > 0):
            raise ConfigurationError("an interval schedule needs a positive interval")
        elif self.kind == "once" and self.at_ms is None:
            raise ConfigurationError("a one-time schedule needs a time")

    # -- identity and storage ------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """What defines the fire times (a change gives a new schedule)."""
        return {
            "kind": self.kind,
            "expr": self.expr,
            "timezone": self.timezone,
            "interval_s": self.interval_s,
            "at_ms": self.at_ms,
        }

    def key(self) -> str:
        """A stable identifier within its flow: the name, or a digest of the definition."""
        if self.name:
            return self.name
        text = json.dumps({**self.spec(), "params": self.params}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """Human form: ``cron 0 2 * * * (Europe/Paris)``, ``every 300s``, ``once at …``."""
        if self.kind == "cron":
            return f"cron {self.expr}" + ("" if self.timezone == "UTC" else f" ({self.timezone})")
        if self.kind == "interval":
            return f"every {self.interval_s:g}s"
        return f"once at {datetime.fromtimestamp((self.at_ms or 0) / 1000, UTC).isoformat()}"

    def to_json(self) -> dict[str, Any]:
        return {
            **self.spec(),
            "params": self.params,
            "catchup": self.catchup,
            "catchup_window_s": self.catchup_window_s,
            "misfire_grace_s": self.misfire_grace_s,
            "overlap": self.overlap,
            "jitter_s": self.jitter_s,
            "name": self.name,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schedule:
        return cls(**data)

    # -- fire times ----------------------------------------------------------------------------

    def next_fire(self, after_ms: int) -> int | None:
        """The first fire time strictly after ``after_ms`` (epoch ms), or None if none."""
        if self.kind == "once":
            assert self.at_ms is not None
            return self.at_ms if self.at_ms > after_ms else None
        if self.kind == "interval":
            assert self.interval_s is not None
            step = int(self.interval_s * 1000)
            return (after_ms // step + 1) * step
        return next_cron_fire(self.expr or "", self.timezone, after_ms)

    def fires_between(self, after_ms: int, until_ms: int, limit: int = 10_000) -> list[int]:
        """Fire times in ``(after_ms, until_ms]``, at most ``limit``."""
        out: list[int] = []
        t: int | None = after_ms
        while len(out) < limit:
            assert t is not None
            t = self.next_fire(t)
            if t is None or t > until_ms:
                break
            out.append(t)
        return out

    def jitter_ms(self, schedule_id: str, fire_ms: int) -> int:
        """Deterministic jitter for one fire: every worker computes the same delay."""
        if not self.jitter_s:
            return 0
        digest = hashlib.sha256(f"{schedule_id}@{fire_ms}".encode()).digest()
        return int(int.from_bytes(digest[:8], "big") / 2**64 * self.jitter_s * 1000)


def cron(
    expr: str,
    *,
    timezone: str = "UTC",
    params: dict[str, Any] | None = None,
    catchup: Catchup = "once",
    catchup_window: float | timedelta = 86_400,
    misfire_grace: float | timedelta = 60,
    overlap: Overlap = "allow",
    jitter: float | timedelta = 0,
    name: str | None = None,
) -> Schedule:
    """A cron schedule: 5 fields (``L`` allowed for the last day of the month) or a preset
    (``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``), in ``timezone``."""
    return Schedule(
        "cron",
        expr=expr.strip(),
        timezone=timezone,
        params=dict(params or {}),
        catchup=catchup,
        catchup_window_s=_seconds(catchup_window),
        misfire_grace_s=_seconds(misfire_grace),
        overlap=overlap,
        jitter_s=_seconds(jitter),
        name=name,
    )


def every(
    *,
    seconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    days: float = 0,
    params: dict[str, Any] | None = None,
    catchup: Catchup = "once",
    catchup_window: float | timedelta = 86_400,
    misfire_grace: float | timedelta = 60,
    overlap: Overlap = "allow",
    jitter: float | timedelta = 0,
    name: str | None = None,
) -> Schedule:
    """A fixed interval, aligned to the Unix epoch (``every(minutes=5)`` fires at :00, :05…)."""
    interval = seconds + 60 * minutes + 3600 * hours + 86400 * days
    return Schedule(
        "interval",
        interval_s=interval,
        params=dict(params or {}),
        catchup=catchup,
        catchup_window_s=_seconds(catchup_window),
        misfire_grace_s=_seconds(misfire_grace),
        overlap=overlap,
        jitter_s=_seconds(jitter),
        name=name,
    )


def once(
    at: datetime, *, params: dict[str, Any] | None = None, name: str | None = None
) -> Schedule:
    """A single fire time (naive datetimes are UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return Schedule(
        "once",
        at_ms=int(at.timestamp() * 1000),
        params=dict(params or {}),
        catchup="all",
        name=name,
    )


def coerce(value: Any) -> list[Schedule]:
    """Normalise ``@app.flow(schedule=...)``: a cron string, a Schedule, or a list of them."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    out: list[Schedule] = []
    for item in items:
        if isinstance(item, str):
            out.append(cron(item))
        elif isinstance(item, Schedule):
            out.append(item)
        else:
            raise ConfigurationError(
                f"invalid schedule {item!r}: use a cron string, cron(), every() or once()"
            )
    keys = [s.key() for s in out]
    if len(set(keys)) != len(keys):
        raise ConfigurationError("two schedules of one flow have the same name or definition")
    return out


@functools.lru_cache(maxsize=65_536)
def parse_definition(text: str) -> Schedule:
    """A stored definition (its JSON text) as a :class:`Schedule`.

    Cached: every scheduler tick reads the same definitions again, and parsing (JSON, then
    building the dataclass) took about a third of the Python time of a tick.
    Treat the result as read-only.
    """
    return Schedule.from_json(json.loads(text))


@functools.lru_cache(maxsize=4096)
def validate_cron(expr: str) -> None:
    """Raise :class:`ConfigurationError` unless ``expr`` is a 5-field cron or a preset."""
    text = expr.strip()
    if text.lower() in PRESETS:
        return
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise ConfigurationError(
            f"invalid cron expression {expr!r}: use 5 fields (minute hour day month weekday) "
            "or @hourly/@daily/@weekly/@monthly/@yearly"
        )


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"unknown time zone {name!r}") from None


@functools.lru_cache(maxsize=8192)
def next_cron_fire(expr: str, timezone: str, after_ms: int) -> int | None:
    """The first fire of ``expr`` in ``timezone`` strictly after ``after_ms``.

    Wall-clock times are generated by croniter on naive local times, then mapped to UTC with
    ``fold=0`` (first occurrence of a repeated time; a non-existent time lands after the gap).
    A mapped time not strictly after ``after_ms`` is skipped, which keeps fire times strictly
    increasing across transitions. Cached: many schedules share an expression and a due time.
    """
    tz = zone(timezone)
    after = datetime.fromtimestamp(after_ms / 1000, UTC)
    local = after.astimezone(tz).replace(tzinfo=None, fold=0)
    # Near a clock change, start an hour early so a wall time shifted past a spring-forward
    # gap is not missed; elsewhere start right at ``after`` (much cheaper).
    if tz.utcoffset(local) != tz.utcoffset(local - timedelta(hours=3)):
        local -= timedelta(hours=1)
    it = _croniter(expr, local)
    for _ in range(_MAX_STEPS):
        candidate: datetime = it.get_next(datetime)
        fire_ms = int(candidate.replace(tzinfo=tz, fold=0).timestamp() * 1000)
        if fire_ms > after_ms:
            return fire_ms
    return None  # pragma: no cover - a valid cron fires within _MAX_STEPS


def _croniter(expr: str, start: datetime) -> croniter:
    return croniter(expr, start)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
