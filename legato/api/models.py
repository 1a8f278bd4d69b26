"""Request bodies and the documented shapes of answers (OpenAPI).

Answers are produced by :mod:`legato.serializers` through :class:`~legato.client.Client`,
the same JSON the CLI prints with ``--json``; these models only describe them (the
schemathesis test checks that the two agree).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..tokens import ROLES

#: No NUL character (PostgreSQL text cannot hold one).
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(max_length=1000, pattern=NO_NUL)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
Timestamp = str | None
INT32 = 2**31 - 1


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitRun(Body):
    """A run to create."""

    flow: Name = Field(description="Name of a registered flow.")
    params: dict[str, Any] = Field(default_factory=dict, description="The flow's parameters.")
    queue: Name | None = Field(default=None, description="Queue override.")
    at: datetime | None = Field(default=None, description="Start at this time (ISO 8601).")
    delay_seconds: float | None = Field(
        default=None, ge=0, le=10 * 365 * 86400, description="Start after this many seconds."
    )
    idempotency_key: Name | None = Field(
        default=None, description="Submitting again with the same key returns the same run."
    )
    priority: int | None = Field(default=None, ge=-INT32, le=INT32, description="Higher first.")


class EmitEvent(Body):
    """An event: starts one run per subscribed flow whose filter matches the payload."""

    name: Name = Field(description="Event name, e.g. order.created.")
    payload: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: Name | None = Field(default=None, description="Emit once per key.")


class QueueSettings(Body):
    """Changes to a queue's settings; a field left out keeps its value."""

    paused: bool | None = Field(default=None, description="Stop (true) or resume claims.")
    strict: bool | None = Field(
        default=None, description="One run at a time, in submission order, across workers."
    )
    concurrency: int | None = Field(
        default=None, ge=1, le=INT32, description="Most runs running at once; null: no cap."
    )


class SetLimit(Body):
    """A named limit's size: runs at once and/or starts per period."""

    concurrency: int | None = Field(default=None, ge=0, le=INT32, description="Runs at once.")
    rate: Name | None = Field(default=None, description="Starts per period, e.g. 100/1m.")


class CreateToken(Body):
    name: Name
    role: str = Field(json_schema_extra={"enum": list(ROLES)}, pattern="^(viewer|operator|admin)$")


class Step(BaseModel):
    position: int
    name: str
    status: str
    attempts: int
    started_at: Timestamp
    finished_at: Timestamp
    error: str | None
    traceback: str | None


class RunEvent(BaseModel):
    ts: Timestamp
    status: str
    attempt: int
    worker: str | None


class WaitingReason(BaseModel):
    """One reason a run waits: ``not_due``, ``sleeping``, ``queue_paused``, ``limit``,
    ``rate_limited``, ``queue_order`` (strict queue), ``queue_limit``, ``no_worker`` or
    ``queued``."""

    model_config = ConfigDict(extra="allow")
    reason: str
    message: str


class Waiting(WaitingReason):
    """The main reason a run waits, with all of them."""

    reasons: list[WaitingReason]


class Run(BaseModel):
    """A run (SPEC §3): the same JSON as ``legato runs show --json``."""

    id: str
    flow: str
    status: str = Field(
        description="scheduled, queued, retrying, sleeping, running, succeeded, failed, cancelled"
    )
    params: Any
    result: Any
    error: str | None
    traceback: str | None
    failed_step: str | None
    attempts: int
    max_attempts: int
    queue: str
    priority: int
    trigger: str
    worker: str | None
    parent_id: str | None
    retry_of: str | None
    idempotency_key: str | None
    recoveries: int
    cancel_requested: bool
    created_at: Timestamp
    scheduled_for: Timestamp
    started_at: Timestamp
    finished_at: Timestamp
    duration_ms: int | None
    steps: list[Step] | None = Field(default=None, description="In run details only.")
    events: list[RunEvent] | None = Field(default=None, description="In run details only.")
    waiting: Waiting | None = Field(
        default=None,
        description="In run details only: why a run that is not running has not started.",
    )


class RunPage(BaseModel):
    items: list[Run]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class Cancelled(BaseModel):
    id: str
    status: str = Field(
        description="`cancelled`, or `running` when the run stops at its next step."
    )


class LogLine(BaseModel):
    id: int
    ts: Timestamp
    level: str
    step: str | None
    attempt: int
    message: str


class LogPage(BaseModel):
    items: list[LogLine]
    next_after: int | None = Field(description="Pass as `after` for the next page, if more.")


class LastRun(BaseModel):
    id: str
    status: str
    created_at: Timestamp
    finished_at: Timestamp


class Flow(BaseModel):
    name: str
    description: str | None
    version: str | None
    queue: str
    priority: int
    max_attempts: int
    timeout: float | None
    retry_policy: Any
    schedules: list[Any]
    is_async: bool
    updated_at: Timestamp
    last_run: LastRun | None
    last_status: str | None
    next_fire_at: Timestamp


class ScheduleState(BaseModel):
    id: str
    flow: str
    schedule: str
    kind: str
    params: Any
    catchup: Any
    catchup_window_s: float | None
    overlap: Any
    jitter_s: float | None
    paused: bool
    next_fire_at: Timestamp
    last_fire_at: Timestamp


class FlowDetail(Flow):
    parameters: list[Any]
    recent_runs: list[Run]
    paused: bool
    schedule_states: list[ScheduleState]


class Paused(BaseModel):
    flow: str
    paused: bool


class UpcomingFire(BaseModel):
    flow: str
    schedule: str
    fire_at: str


class Stats(BaseModel):
    """Counts by status: terminal ones finished in the window, others are active now."""

    since: str
    until: str
    counts: dict[str, int]
    by_flow: dict[str, dict[str, int]]


class SeriesPoint(BaseModel):
    start: str
    counts: dict[str, int]


class StatsSeries(BaseModel):
    since: str
    until: str
    bucket_seconds: float
    flow: str | None
    series: list[SeriesPoint]


class Worker(BaseModel):
    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    running: int
    started_at: Timestamp
    last_heartbeat: Timestamp
    alive: bool


class Queue(BaseModel):
    name: str
    queued: int
    running: int
    scheduled: int
    oldest_queued_at: Timestamp
    workers: list[str]
    paused: bool = False
    strict: bool = False
    concurrency: int | None = None


class QueueState(BaseModel):
    name: str
    paused: bool
    strict: bool
    concurrency: int | None


class Limit(BaseModel):
    name: str
    kind: str = Field(description="`named` (legato limits set) or `flow` (declared by a flow).")
    concurrency: int | None
    rate: int | None
    period_seconds: float | None
    running: int
    running_by_key: dict[str, int]
    recent_starts: int
    updated_at: Timestamp


class Token(BaseModel):
    id: str
    name: str
    role: str
    created_at: Timestamp
    last_used_at: Timestamp
    revoked_at: Timestamp
    active: bool


class NewToken(Token):
    token: str = Field(description="The token itself: shown this once, stored hashed.")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    database: str
    schema_: str | None = Field(alias="schema")
    expected_schema: str | None = None
