"""The service layer: every question and action of Legato, without needing the flow code.

The CLI (and the REST API and dashboard) go through :class:`Client`; it reads and writes the
store and shapes answers with :mod:`legato.serializers`, so every interface gives the same
JSON. Input is validated here, before anything is written.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from . import flow_control, serialization, tokens, waiting
from .app import new_run_id
from .config import Settings
from .errors import InvalidState, UnknownFlow, UnknownRun, UnknownToken
from .limits import limit_keys_for
from .scheduler import schedule_run_key
from .schedules import Schedule
from .serializers import (
    flow_json,
    log_json,
    queues_json,
    run_json,
    stats_json,
    stats_series_json,
    token_json,
    worker_json,
)
from .store import FlowRecord, NewRun, RunFilter, Store
from .store.migrate import HEAD
from .store.records import RUN_STATUSES, TERMINAL
from .timeutil import to_iso, to_ms

#: Sort keys of :meth:`Client.runs_page` (``-`` means newest first).
RUN_SORTS = ("-created_at", "created_at", "-finished_at", "finished_at")
#: Bucket widths (seconds) tried, smallest first, when a time series names none.
SERIES_BUCKETS = (60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400, 604800)
MAX_SERIES_BUCKETS = 1000


class Client:
    """Questions and manual actions over a store."""

    def __init__(self, store: Store, settings: Settings | None = None) -> None:
        self.store = store
        self.settings = settings or Settings.from_env()

    # -- flows -----------------------------------------------------------------------------

    def flow(self, name: str) -> FlowRecord:
        record = self.store.get_flow(name)
        if record is None:
            known = ", ".join(f.name for f in self.store.list_flows()) or "none registered yet"
            raise UnknownFlow(f"unknown flow {name!r} (known flows: {known})")
        return record

    def flows(self) -> list[dict[str, Any]]:
        next_fires = self._next_fires()
        return [
            flow_json(f, self.store.last_run_of_flow(f.name), to_iso(next_fires.get(f.name)))
            for f in self.store.list_flows()
        ]

    def flow_detail(self, name: str) -> dict[str, Any]:
        record = self.flow(name)
        out = flow_json(
            record, self.store.last_run_of_flow(name), to_iso(self._next_fires(name).get(name))
        )
        out["parameters"] = serialization.loads(record.parameters) or []
        out["recent_runs"] = [
            run_json(r) for r in self.store.list_runs(RunFilter(flow=name, limit=10))
        ]
        return out

    # -- runs ------------------------------------------------------------------------------

    def resolve_run(self, run_id: str) -> str:
        """Accept a full id or an unambiguous prefix of one."""
        if self.store.get_run_status(run_id) is not None:
            return run_id
        full = self.store.resolve_run_id(run_id)
        if full is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        return full

    def run(self, run_id: str) -> dict[str, Any]:
        run_id = self.resolve_run(run_id)
        row = self.store.get_run(run_id)
        if row is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        out = run_json(row, self.store.get_steps(run_id), self.store.get_events(run_id))
        out["waiting"] = waiting.explain(self.store, row, self.settings)
        return out

    def runs(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        since_ms: int | None = None,
        limit: int = 50,
        queue: str | None = None,
        trigger: str | None = None,
        parent_id: str | None = None,
    ) -> list[dict[str, Any]]:
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"unknown status {status!r} (one of: {', '.join(RUN_STATUSES)})")
        if not 1 <= limit <= 10_000:
            raise ValueError("limit must be between 1 and 10000")
        rows = self.store.list_runs(
            RunFilter(
                flow=flow,
                status=status,
                since_ms=since_ms,
                limit=limit,
                queue=queue,
                trigger=trigger,
                parent_id=parent_id,
            )
        )
        return [run_json(r) for r in rows]

    def submit(
        self,
        flow: str,
        params: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        at: datetime | None = None,
        delay_seconds: float | None = None,
        idempotency_key: str | None = None,
        priority: int | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create a run of a registered flow; returns ``(run, created)``."""
        record = self.flow(flow)
        params = dict(params or {})
        check_params(record, params)
        encoded = serialization.dumps(
            params, what=f"parameters of flow {flow!r}", limit=self.settings.max_payload_bytes
        )
        row, created = self.store.create_run(
            NewRun(
                id=new_run_id(),
                flow=flow,
                params=encoded,
                queue=queue or record.queue,
                max_attempts=record.max_attempts,
                priority=record.priority if priority is None else priority,
                idempotency_key=idempotency_key,
                at_ms=to_ms(at) if at is not None else None,
                delay_ms=int((delay_seconds or 0) * 1000),
                limit_keys=limit_keys_for(record.flow_control, params),
            )
        )
        return run_json(row), created

    def cancel(self, run_id: str) -> str:
        run_id = self.resolve_run(run_id)
        status = self.store.cancel_run(run_id)
        if status is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        return status

    def retry(self, run_id: str) -> dict[str, Any]:
        """Start a new run (trigger ``retry``) with the parameters of a finished one."""
        run_id = self.resolve_run(run_id)
        row = self.store.get_run(run_id)
        if row is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        if row["status"] not in TERMINAL:
            raise InvalidState(
                f"run {run_id} is {row['status']}; only finished runs can be retried"
            )
        record = self.store.get_flow(row["flow"])
        new, _ = self.store.create_run(
            NewRun(
                id=new_run_id(),
                flow=row["flow"],
                params=row["params"],
                queue=row["queue"],
                max_attempts=record.max_attempts if record else row["max_attempts"],
                priority=row["priority"],
                trigger="retry",
                parent_id=row["parent_id"],
                retry_of=run_id,
                limit_keys=row["limit_keys"],
            )
        )
        return run_json(new)

    def logs(self, run_id: str, after_id: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        run_id = self.resolve_run(run_id)
        return [log_json(r) for r in self.store.get_logs(run_id, after_id, limit)]

    # -- events ------------------------------------------------------------------------------

    def emit(
        self,
        event: str,
        payload: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """Start one run per flow subscribed to ``event`` whose filter matches the payload.

        The payload becomes the run's parameters (keys the flow does not take are left out).
        With an idempotency key, each flow's run for this event is created once.
        """
        if not event or not event.strip():
            raise ValueError("an event needs a name")
        payload = dict(payload or {})
        encoded_payload = serialization.dumps(
            payload, what=f"payload of event {event!r}", limit=self.settings.max_payload_bytes
        )
        runs = []
        for flow in self.store.subscribed_flows():
            if event not in json.loads(flow.on_event or "[]"):
                continue
            wanted = json.loads(flow.event_filter) if flow.event_filter else {}
            if any(payload.get(k) != v for k, v in wanted.items()):
                continue
            params = _accepted(flow, payload)
            row, _ = self.store.create_run(
                NewRun(
                    id=new_run_id(),
                    flow=flow.name,
                    params=serialization.dumps(params)
                    if params is not payload
                    else encoded_payload,
                    queue=flow.queue,
                    max_attempts=flow.max_attempts,
                    priority=flow.priority,
                    trigger="event",
                    idempotency_key=f"event:{event}:{idempotency_key}:{flow.name}"
                    if idempotency_key
                    else None,
                    limit_keys=limit_keys_for(flow.flow_control, params),
                )
            )
            runs.append(run_json(row))
        return runs

    # -- schedules ---------------------------------------------------------------------------

    def schedules(self, flow: str | None = None) -> list[dict[str, Any]]:
        """Every stored schedule with its next fire, policies and pause state."""
        if flow is not None:
            self.flow(flow)
        out = []
        for row in self.store.list_schedules():
            if flow is not None and row["flow"] != flow:
                continue
            definition = json.loads(row["definition"])
            schedule = Schedule.from_json(definition)
            out.append(
                {
                    "id": row["id"],
                    "flow": row["flow"],
                    "schedule": schedule.describe(),
                    "kind": schedule.kind,
                    "params": schedule.params,
                    "catchup": schedule.catchup,
                    "catchup_window_s": schedule.catchup_window_s,
                    "overlap": schedule.overlap,
                    "jitter_s": schedule.jitter_s,
                    "paused": bool(row["schedules_paused"]),
                    "next_fire_at": to_iso(row["next_fire_at"]),
                    "last_fire_at": to_iso(row["last_fire_at"]),
                }
            )
        return out

    def upcoming(
        self, until_ms: int, flow: str | None = None, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Every fire time from now up to ``until_ms``, sorted by time (paused flows excluded)."""
        if flow is not None:
            self.flow(flow)
        now = self.store.now_ms()
        fires: list[tuple[int, str, str]] = []
        for row in self.store.list_schedules():
            if row["schedules_paused"] or (flow is not None and row["flow"] != flow):
                continue
            schedule = Schedule.from_json(json.loads(row["definition"]))
            start = now - 1
            if row["next_fire_at"] is None:
                continue
            start = min(start, row["next_fire_at"] - 1)
            for fire in schedule.fires_between(start, until_ms, limit):
                fires.append((fire, row["flow"], schedule.describe()))
        fires.sort()
        return [
            {"flow": name, "schedule": described, "fire_at": to_iso(fire)}
            for fire, name, described in fires[:limit]
        ]

    def set_paused(self, flow: str, paused: bool) -> None:
        self.flow(flow)
        self.store.set_schedules_paused(flow, paused)

    def backfill_fires(self, flow: str, from_ms: int, to_ms_: int) -> list[int]:
        """The fire times of the flow's schedules in ``[from, to]``, sorted."""
        self.flow(flow)
        fires: set[int] = set()
        for row in self.store.list_schedules():
            if row["flow"] == flow:
                schedule = Schedule.from_json(json.loads(row["definition"]))
                fires.update(schedule.fires_between(from_ms - 1, to_ms_))
        return sorted(fires)

    def backfill(self, flow: str, from_ms: int, to_ms_: int) -> list[tuple[str, bool]]:
        """Create the runs the flow's schedules would have created in ``[from, to]``.

        Each fire time gets the scheduler's own idempotency key, so a fire is never run twice
        (a second backfill, or the scheduler itself, finds the existing run).
        Returns ``(run id, created)`` per fire time, in time order.
        """
        record = self.flow(flow)
        if to_ms_ < from_ms:
            raise ValueError("--to must not be before --from")
        fires: list[tuple[int, str, Schedule]] = []
        for row in self.store.list_schedules():
            if row["flow"] != flow:
                continue
            schedule = Schedule.from_json(json.loads(row["definition"]))
            fires.extend(
                (f, row["id"], schedule) for f in schedule.fires_between(from_ms - 1, to_ms_)
            )
        if not fires:
            raise ValueError(f"flow {flow!r} has no schedule fire between those times")
        fires.sort(key=lambda item: item[0])
        out = []
        for fire, schedule_id, schedule in fires:
            row, created = self.store.create_run(
                NewRun(
                    id=new_run_id(),
                    flow=flow,
                    params=json.dumps(schedule.params),
                    queue=record.queue,
                    max_attempts=record.max_attempts,
                    priority=record.priority,
                    trigger="schedule",
                    schedule_id=schedule_id,
                    idempotency_key=schedule_run_key(schedule_id, fire),
                    limit_keys=limit_keys_for(record.flow_control, schedule.params),
                )
            )
            out.append((str(row["id"]), created))
        return out

    # -- operations --------------------------------------------------------------------------

    def stats(self, since_ms: int, flow: str | None = None) -> dict[str, Any]:
        until = self.store.now_ms()
        return stats_json(self.store.stats(since_ms, until, flow), since_ms, until)

    def workers(self) -> list[dict[str, Any]]:
        dead_ms = int(self.settings.worker_dead_after_seconds * 1000)
        return [worker_json(w) for w in self.store.list_workers(dead_ms)]

    def queues(self) -> list[dict[str, Any]]:
        dead_ms = int(self.settings.worker_dead_after_seconds * 1000)
        out = queues_json(self.store.queue_counts(), self.store.list_workers(dead_ms))
        return flow_control.with_queue_settings(out, self.store.queue_settings())

    # -- flow control: queues and limits (legato.flow_control) -------------------------------

    def set_queue(
        self,
        name: str,
        *,
        paused: bool | None = None,
        strict: bool | None = None,
        concurrency: int | flow_control.Unset | None = flow_control.UNSET,
    ) -> dict[str, Any]:
        """Pause/resume a queue, make it strict or not, set or clear its concurrency limit."""
        return flow_control.set_queue(
            self.store, name, paused=paused, strict=strict, concurrency=concurrency
        )

    def limits(self) -> list[dict[str, Any]]:
        """Every limit with its size and current use."""
        return flow_control.limits(self.store)

    def set_limit(
        self, name: str, concurrency: int | None = None, rate: str | None = None
    ) -> dict[str, Any]:
        """Create or resize a named limit (``limits=[name]`` on flows)."""
        return flow_control.set_limit(self.store, name, concurrency, rate)

    def delete_limit(self, name: str) -> None:
        flow_control.delete_limit(self.store, name)

    # -- REST API: pages, series, overviews, readiness ------------------------------------------

    def runs_page(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        queue: str | None = None,
        trigger: str | None = None,
        parent_id: str | None = None,
        limit: int = 50,
        sort: str = "-created_at",
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of runs: ``{"items": [run, ...], "next_cursor": str | None}``.

        Keyset pagination: pass ``next_cursor`` back as ``cursor`` for the next page; pages
        stay stable while new runs arrive. ``sort`` is one of :data:`RUN_SORTS`.
        """
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"unknown status {status!r} (one of: {', '.join(RUN_STATUSES)})")
        if sort not in RUN_SORTS:
            raise ValueError(f"cannot sort by {sort!r} (one of: {', '.join(RUN_SORTS)})")
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        order, descending = sort.lstrip("-"), sort.startswith("-")
        rows = self.store.list_runs_page(
            RunFilter(
                flow=flow,
                status=status,
                since_ms=since_ms,
                until_ms=until_ms,
                queue=queue,
                trigger=trigger,
                parent_id=parent_id,
                limit=limit + 1,
            ),
            order=order,
            descending=descending,
            after=_decode_cursor(cursor, sort) if cursor else None,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if rows else None
        return {
            "items": [run_json(r) for r in rows],
            "next_cursor": _encode_cursor(sort, last[order], last["id"]) if more and last else None,
        }

    def stats_series(
        self,
        since_ms: int,
        until_ms: int | None = None,
        flow: str | None = None,
        bucket_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Finished runs per status in time buckets over ``[since, until]`` (for charts)."""
        until = self.store.now_ms() if until_ms is None else until_ms
        if until <= since_ms:
            raise ValueError("the window is empty: 'until' must be after 'since'")
        span = until - since_ms
        if bucket_seconds is None:
            bucket_ms = next(
                (b * 1000 for b in SERIES_BUCKETS if span / (b * 1000) <= 100),
                SERIES_BUCKETS[-1] * 1000,
            )
        else:
            bucket_ms = int(bucket_seconds * 1000)
            if bucket_ms < 1000:
                raise ValueError("a bucket must be at least 1 second wide")
        if span / bucket_ms > MAX_SERIES_BUCKETS:
            raise ValueError(
                f"{span / bucket_ms:.0f} buckets is too many (at most {MAX_SERIES_BUCKETS}): "
                "use a wider bucket or a shorter window"
            )
        rows = self.store.stats_series(since_ms, until, bucket_ms, flow)
        return stats_series_json(rows, since_ms, until, bucket_ms, flow)

    def flow_overview(self, name: str) -> dict[str, Any]:
        """One flow with its parameters, recent runs, schedules (state included), next fire."""
        out = self.flow_detail(name)
        out["paused"] = self.flow(name).schedules_paused
        out["schedule_states"] = self.schedules(name)
        return out

    def _next_fires(self, flow: str | None = None) -> dict[str, int]:
        fires: dict[str, int] = {}
        for row in self.store.list_schedules():
            fire = row["next_fire_at"]
            if row["schedules_paused"] or fire is None or (flow and row["flow"] != flow):
                continue
            fires[row["flow"]] = min(fire, fires.get(row["flow"], fire))
        return fires

    def run_counts(self) -> list[dict[str, Any]]:
        """``[{"flow", "status", "count"}]``: every run, by flow and status."""
        return [
            {"flow": r["flow"], "status": r["status"], "count": int(r["n"])}
            for r in self.store.run_counts()
        ]

    def claim_latency(self, window_ms: int = 300_000, limit: int = 10_000) -> dict[str, Any]:
        """Queue wait (due to claimed) of first attempts that finished in the last
        ``window_ms`` (the ``limit`` most recent): ``{"count", "sum_seconds", "quantiles"}``."""
        waits = sorted(self.store.claim_latencies(self.store.now_ms() - window_ms, limit))

        def quantile(q: float) -> float:
            return waits[min(len(waits) - 1, int(q * len(waits)))] / 1000 if waits else 0.0

        return {
            "count": len(waits),
            "sum_seconds": sum(waits) / 1000,
            "quantiles": {str(q): quantile(q) for q in (0.5, 0.95, 0.99)},
        }

    def schedule_lags(self) -> list[dict[str, Any]]:
        """How late each due, unpaused schedule is: ``[{"flow", "schedule", "lag_seconds"}]``."""
        now = self.store.now_ms()
        return [
            {
                "flow": row["flow"],
                "schedule": row["id"],
                "lag_seconds": max(0, now - row["next_fire_at"]) / 1000,
            }
            for row in self.store.list_schedules()
            if not row["schedules_paused"] and row["next_fire_at"] is not None
        ]

    def readiness(self) -> dict[str, Any]:
        """``{"ready": bool, "database": ..., "schema": revision, "expected": HEAD}``."""
        try:
            self.store.now_ms()
            revision = self.store.schema_revision()
        except Exception as exc:  # any driver error means "not ready", never a crash
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return {"ready": False, "database": f"unreachable: {reason}", "schema": None}
        return {
            "ready": revision == HEAD,
            "database": "ok",
            "schema": revision,
            "expected_schema": HEAD,
        }

    # -- API tokens ----------------------------------------------------------------------------

    def create_token(self, name: str, role: str) -> dict[str, Any]:
        """Create a token; the answer's ``token`` field is the only time it is shown."""
        name = name.strip()
        if not name or len(name) > 100 or not name.isprintable():
            raise ValueError("a token name must be 1 to 100 printable characters")
        if role not in tokens.ROLES:
            raise ValueError(f"unknown role {role!r} (one of: {', '.join(tokens.ROLES)})")
        secret = tokens.generate()
        row = self.store.create_token(tokens.new_token_id(), name, role, tokens.hash_token(secret))
        if row is None:
            raise InvalidState(f"an active token is already named {name!r}: revoke it first")
        return {**token_json(row), "token": secret}

    def tokens(self) -> list[dict[str, Any]]:
        return [token_json(r) for r in self.store.list_tokens()]

    def revoke_token(self, ident: str) -> dict[str, Any]:
        """Revoke the active token with this id or name."""
        found = self.store.find_active_tokens(ident)
        if len(found) > 1:
            raise InvalidState(f"{ident!r} names several tokens: revoke by id")
        row = self.store.revoke_token(found[0]["id"]) if found else None
        if row is None:
            raise UnknownToken(f"no active token with id or name {ident!r}")
        return token_json(row)

    def authenticate(self, token: str) -> dict[str, Any] | None:
        """The active token presented as ``token``, or ``None``. Records its last use."""
        row = self.store.token_by_hash(tokens.hash_token(token))
        if row is None or not tokens.matches(token, row["token_hash"]):
            return None
        last = row["last_used_at"]
        if last is None or last < self.store.now_ms() - 60_000:
            self.store.touch_token(row["id"])
        return token_json(row)

    def tokens_exist(self) -> bool:
        """Whether any active token exists (then every API call needs one)."""
        return self.store.has_active_tokens()


def _encode_cursor(sort: str, value: Any, run_id: str) -> str:
    raw = json.dumps([sort, value, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, value, run_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("invalid cursor: pass back the next_cursor of a previous page") from None
    if cursor_sort != sort:
        raise ValueError(f"this cursor belongs to sort {cursor_sort!r}, not {sort!r}")
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not -(2**63) <= value < 2**63
        or not isinstance(run_id, str)
        or "\x00" in run_id
    ):
        raise ValueError("invalid cursor: pass back the next_cursor of a previous page")
    return value, run_id


def _accepted(flow: FlowRecord, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload keys the flow takes as parameters (all of them if it takes ``**kwargs``)."""
    described = json.loads(flow.parameters) if flow.parameters else None
    if described is None or any(p.get("variadic") for p in described):
        return payload
    names = {p["name"] for p in described}
    return {k: v for k, v in payload.items() if k in names}


def check_params(flow: FlowRecord, params: dict[str, Any]) -> None:
    """Refuse unknown or missing parameters, when the flow's signature is known."""
    described = json.loads(flow.parameters) if flow.parameters else None
    if described is None:
        return
    if any(p.get("variadic") for p in described):
        return
    names = {p["name"] for p in described}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(
            f"flow {flow.name!r} has no parameter {', '.join(map(repr, unknown))} "
            f"(parameters: {', '.join(sorted(names)) or 'none'})"
        )
    missing = [p["name"] for p in described if p.get("required") and p["name"] not in params]
    if missing:
        raise ValueError(f"flow {flow.name!r} needs parameter {', '.join(map(repr, missing))}")
