"""Flow control as declared on a flow: concurrency and rate limits, their keys, isolation.

A run's limits are fixed when it is created: :func:`limit_keys_for` turns the flow's
declaration and the run's parameters into ``runs.limit_keys``, a JSON list of
``[limit name, key]`` pairs. Limit names:

=============================  ==================================================================
``flow:<flow>``                the flow as a whole (``concurrency=N`` without a key, ``rate_limit``
                               without a key)
``flow:<flow>:concurrency``    per key: ``concurrency=N`` with ``concurrency_key=...``
``flow:<flow>:rate``           per key: ``rate_limit=...`` with ``rate_limit_key=...``
``<name>``                     a named limit (``limits=["warehouse-db"]``), sized with
                               ``legato limits set NAME N``
=============================  ==================================================================

The sizes live in the ``limits`` table (flow limits are written when a worker starts, named
ones by the CLI and API), so they apply across every worker; a run without any limit has
``limit_keys = NULL`` and takes the plain, fast claim.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import ConfigurationError
from .timeutil import parse_duration

KeySpec = str | Callable[[dict[str, Any]], Any] | None
ISOLATIONS = ("thread", "process")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,99}$")


def default_max_recoveries() -> int:
    """``$LEGATO_MAX_RECOVERIES`` (5): lease expiries a run survives before it is poison."""
    raw = os.environ.get("LEGATO_MAX_RECOVERIES")
    return int(raw) if raw else 5


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` starts per ``period`` seconds."""

    count: int
    period: float

    @classmethod
    def coerce(cls, value: Any) -> RateLimit | None:
        """Accept ``"10/s"``, ``"100/1m"``, ``"5/30s"``, ``(10, 60)`` or a RateLimit."""
        if value is None or isinstance(value, RateLimit):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            count, period = value
            seconds = period.total_seconds() if isinstance(period, timedelta) else float(period)
            return cls._checked(int(count), seconds)
        if isinstance(value, str) and "/" in value:
            count_text, _, period_text = value.partition("/")
            period_text = period_text.strip()
            if period_text and period_text[0].isalpha():
                period_text = "1" + period_text
            try:
                seconds = parse_duration(period_text).total_seconds()
                count = int(count_text)
            except ValueError:
                raise ConfigurationError(
                    f"invalid rate limit {value!r}: use N/PERIOD such as 10/s, 100/1m, 5/30s"
                ) from None
            return cls._checked(count, seconds)
        raise ConfigurationError(
            f"invalid rate limit {value!r}: use N/PERIOD such as 10/s, 100/1m, 5/30s"
        )

    @classmethod
    def _checked(cls, count: int, seconds: float) -> RateLimit:
        if count < 1 or seconds <= 0:
            raise ConfigurationError("a rate limit needs at least 1 start per positive period")
        return cls(count, seconds)

    @property
    def period_ms(self) -> int:
        return int(self.period * 1000)

    def describe(self) -> str:
        return f"{self.count}/{self.period:g}s"


def check_limit_name(name: str) -> str:
    if not NAME_RE.match(name) or name.startswith("flow:"):
        raise ValueError(
            f"invalid limit name {name!r}: 1 to 100 letters, digits and _.:@/- "
            "(names starting with 'flow:' are reserved)"
        )
    return name


@dataclass(frozen=True)
class FlowControl:
    """What a flow declares: limits, their keys, isolation, poison threshold."""

    flow: str
    concurrency: int | None = None
    concurrency_key: KeySpec = None
    limits: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None
    rate_limit_key: KeySpec = None
    isolation: str = "thread"
    memory_limit_mb: int | None = None
    max_recoveries: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigurationError(f"flow {self.flow!r}: concurrency must be at least 1")
        if self.concurrency_key is not None and self.concurrency is None:
            raise ConfigurationError(f"flow {self.flow!r}: concurrency_key needs concurrency=N")
        if self.rate_limit_key is not None and self.rate_limit is None:
            raise ConfigurationError(f"flow {self.flow!r}: rate_limit_key needs rate_limit")
        if self.isolation not in ISOLATIONS:
            raise ConfigurationError(
                f"flow {self.flow!r}: isolation must be one of {', '.join(ISOLATIONS)}"
            )
        if self.memory_limit_mb is not None and self.isolation != "process":
            raise ConfigurationError(f"flow {self.flow!r}: memory_limit needs isolation='process'")
        if self.max_recoveries is not None and self.max_recoveries < 0:
            raise ConfigurationError(f"flow {self.flow!r}: max_recoveries must be >= 0")
        for name in self.limits:
            try:
                check_limit_name(name)
            except ValueError as exc:
                raise ConfigurationError(f"flow {self.flow!r}: {exc}") from None

    @property
    def gated(self) -> bool:
        """Whether runs of the flow have limits (and take the gated claim)."""
        return bool(self.concurrency or self.limits or self.rate_limit)

    def describe(self) -> dict[str, Any] | None:
        """The JSON stored in ``flows.flow_control`` (``None`` when nothing is declared)."""
        out: dict[str, Any] = {}
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.concurrency_key is not None:
            out["concurrency_key"] = _describe_key(self.concurrency_key)
        if self.limits:
            out["limits"] = list(self.limits)
        if self.rate_limit is not None:
            out["rate_limit"] = {
                "count": self.rate_limit.count,
                "period_seconds": self.rate_limit.period,
            }
        if self.rate_limit_key is not None:
            out["rate_limit_key"] = _describe_key(self.rate_limit_key)
        if self.isolation != "thread":
            out["isolation"] = self.isolation
        if self.memory_limit_mb is not None:
            out["memory_limit_mb"] = self.memory_limit_mb
        return {"flow": self.flow, **out} if out else None

    def limit_rows(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The flow's rows of the ``limits`` table to set, and the names to clear."""
        rows: list[dict[str, Any]] = []
        clear: list[str] = []
        whole: dict[str, int | None] = {"concurrency": None, "rate": None, "period_ms": None}
        if self.concurrency is not None and self.concurrency_key is None:
            whole["concurrency"] = self.concurrency
        if self.rate_limit is not None and self.rate_limit_key is None:
            whole["rate"], whole["period_ms"] = self.rate_limit.count, self.rate_limit.period_ms
        per_key: list[tuple[str, dict[str, Any] | None]] = [
            (f"flow:{self.flow}", whole if any(v is not None for v in whole.values()) else None),
            (
                f"flow:{self.flow}:concurrency",
                {"concurrency": self.concurrency, "rate": None, "period_ms": None}
                if self.concurrency_key is not None
                else None,
            ),
            (
                f"flow:{self.flow}:rate",
                {
                    "concurrency": None,
                    "rate": self.rate_limit.count,
                    "period_ms": self.rate_limit.period_ms,
                }
                if self.rate_limit_key is not None and self.rate_limit is not None
                else None,
            ),
        ]
        for name, values in per_key:
            if values is None:
                clear.append(name)
            else:
                rows.append({"name": name, **values})
        return rows, clear

    def keys(self, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The ``[limit name, key]`` pairs of a run with these parameters."""
        keys: list[tuple[str, str]] = []
        if (self.concurrency is not None and self.concurrency_key is None) or (
            self.rate_limit is not None and self.rate_limit_key is None
        ):
            keys.append((f"flow:{self.flow}", ""))
        if self.concurrency_key is not None:
            keys.append((f"flow:{self.flow}:concurrency", key_value(self.concurrency_key, params)))
        if self.rate_limit_key is not None:
            keys.append((f"flow:{self.flow}:rate", key_value(self.rate_limit_key, params)))
        keys.extend((name, "") for name in self.limits)
        return keys


def _describe_key(spec: KeySpec) -> str:
    if isinstance(spec, str):
        return spec
    name = getattr(spec, "__qualname__", None) or repr(spec)
    return f"<function {getattr(spec, '__module__', '?')}.{name}>"


def key_value(spec: KeySpec, params: Mapping[str, Any]) -> str:
    """A key from the parameters: a parameter name (``"customer.id"`` reads into a dict) or
    a callable given the parameters. Non-string keys are JSON encoded."""
    value: Any
    if callable(spec):
        value = spec(dict(params))
    elif isinstance(spec, str):
        value = params
        for part in spec.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    else:
        value = None
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def encode_keys(keys: Sequence[tuple[str, str]]) -> str | None:
    """The canonical ``runs.limit_keys`` text (identical for runs with identical limits)."""
    if not keys:
        return None
    return json.dumps([list(k) for k in keys], separators=(",", ":"))


def limit_keys_for(
    flow_control: str | None, params: Mapping[str, Any], local: FlowControl | None = None
) -> str | None:
    """The ``limit_keys`` of a new run, from the flow's code when this process has it, else
    from its stored declaration (a callable key cannot run there: its key is ``"?"``)."""
    if local is not None:
        return encode_keys(local.keys(params))
    if not flow_control:
        return None
    declared = json.loads(flow_control)
    stored = FlowControl(
        flow=str(declared.get("flow", "")),
        concurrency=declared.get("concurrency"),
        concurrency_key=_stored_key(declared.get("concurrency_key")),
        limits=tuple(declared.get("limits", ())),
        rate_limit=(
            RateLimit(
                int(declared["rate_limit"]["count"]),
                float(declared["rate_limit"]["period_seconds"]),
            )
            if declared.get("rate_limit")
            else None
        ),
        rate_limit_key=_stored_key(declared.get("rate_limit_key")),
    )
    return encode_keys(stored.keys(params))


def _stored_key(described: str | None) -> KeySpec:
    if described is None:
        return None
    if described.startswith("<function "):
        return lambda _params: "?"
    return described
