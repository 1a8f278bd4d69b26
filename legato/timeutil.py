"""Time helpers: epoch milliseconds (the storage format), ISO 8601 and durations."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def now_ms() -> int:
    """Current wall-clock time in epoch milliseconds (client side; the database clock rules)."""
    return int(datetime.now(UTC).timestamp() * 1000)


def to_iso(ms: int | None) -> str | None:
    """Epoch milliseconds to ISO 8601 UTC with a ``Z`` suffix, millisecond precision."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def to_ms(dt: datetime) -> int:
    """A datetime (naive means UTC) to epoch milliseconds."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp; naive values are UTC. Raises ``ValueError`` if invalid."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid ISO 8601 time: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """Parse ``500ms``, ``30s``, ``5m``, ``2h``, ``1d``, ``1w`` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"invalid duration: {text!r} (use e.g. 30s, 5m, 2h, 1d)")
    amount, unit = match.groups()
    return timedelta(seconds=float(amount) * _UNIT_SECONDS[unit or "s"])


def as_seconds(value: float | timedelta | None) -> float | None:
    """Normalise a timeout given as seconds or a timedelta."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ValueError("a timeout must be positive")
    return seconds
