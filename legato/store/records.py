"""Plain records passed between the store and the rest of Legato."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The terminal statuses, in the order counts and charts list them.
FINISHED = ("succeeded", "failed", "cancelled")
TERMINAL = frozenset(FINISHED)
WAITING = frozenset({"queued", "scheduled", "retrying", "sleeping"})
RUN_STATUSES = (
    "scheduled",
    "queued",
    "retrying",
    "sleeping",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)


@dataclass(frozen=True)
class NewRun:
    """A run to create. Either ``at_ms`` (absolute, epoch ms) or ``delay_ms`` sets the due time."""

    id: str
    flow: str
    params: str  # JSON object
    queue: str
    max_attempts: int = 1
    priority: int = 0
    trigger: str = "manual"
    parent_id: str | None = None
    retry_of: str | None = None
    schedule_id: str | None = None
    idempotency_key: str | None = None
    at_ms: int | None = None
    delay_ms: int = 0
    limit_keys: str | None = None  # JSON list of [limit name, key]; None: no limits

    def as_params(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "flow": self.flow,
            "params": self.params,
            "queue": self.queue,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "trigger": self.trigger,
            "parent_id": self.parent_id,
            "retry_of": self.retry_of,
            "schedule_id": self.schedule_id,
            "idempotency_key": self.idempotency_key,
            "at_ms": self.at_ms,
            "delay_ms": self.delay_ms,
            "limit_keys": self.limit_keys,
        }


@dataclass(frozen=True)
class ClaimedRun:
    """A run a worker now owns under ``token`` (its fencing token)."""

    id: str
    flow: str
    params: str
    attempt: int
    max_attempts: int
    token: int
    queue: str
    parent_id: str | None
    has_history: bool
    #: A worker died while this run was executing (``crashes`` > 0): it runs alone next, so
    #: that a crash during it is blamed on it exactly (see ``docs/reliability.md``).
    suspect: bool = False
    #: The run was taken back from a worker before (``recoveries`` > 0).
    recovered: bool = False


@dataclass(frozen=True)
class FlowRecord:
    """A flow's definition as stored, so that the CLI and server work without the code."""

    name: str
    queue: str = "default"
    description: str | None = None
    version: str | None = None
    priority: int = 0
    max_attempts: int = 1
    timeout_s: float | None = None
    retry_policy: str | None = None  # JSON
    schedules: str | None = None  # JSON list
    parameters: str | None = None  # JSON list of {name, required, default, annotation}
    is_async: bool = False
    schedules_paused: bool = False
    on_event: str | None = None  # JSON list of event names
    event_filter: str | None = None  # JSON object
    updated_at: int | None = None
    flow_control: str | None = None  # JSON: limits, keys, isolation (legato.limits)
    max_recoveries: int | None = None


@dataclass(frozen=True)
class StepRecord:
    position: int
    name: str
    status: str
    attempts: int
    run_attempt: int
    started_at: int
    finished_at: int | None
    result: str | None
    error: str | None
    traceback: str | None


@dataclass(frozen=True)
class LogLine:
    """One captured line, fenced by the run's lease token when written."""

    run_id: str
    token: int
    ts: int
    level: str
    step: str | None
    attempt: int
    message: str


@dataclass
class RunFilter:
    """Filters for listing runs (newest first)."""

    flow: str | None = None
    status: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    queue: str | None = None
    trigger: str | None = None
    parent_id: str | None = None
    limit: int = 50
    extra: dict[str, Any] = field(default_factory=dict)
