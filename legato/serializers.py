"""The JSON shapes of SPEC §3, shared by the CLI (``--json``) and, later, the REST API."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from . import serialization
from .store.records import FINISHED, TERMINAL, FlowRecord, StepRecord
from .timeutil import to_iso

Row = dict[str, Any]


def step_json(step: StepRecord) -> dict[str, Any]:
    return {
        "position": step.position,
        "name": step.name,
        "status": step.status,
        "attempts": step.attempts,
        "started_at": to_iso(step.started_at),
        "finished_at": to_iso(step.finished_at),
        "error": step.error,
        "traceback": step.traceback,
    }


def run_json(
    row: Row,
    steps: Sequence[StepRecord] | None = None,
    events: Sequence[Row] | None = None,
) -> dict[str, Any]:
    """A run in the SPEC's shape; ``steps`` and ``events`` are included when given."""
    out: dict[str, Any] = {
        "id": row["id"],
        "flow": row["flow"],
        "status": row["status"],
        "params": serialization.loads(row["params"]),
        "result": serialization.loads(row["result"]),
        "error": row["error"] if row["status"] != "succeeded" else None,
        "traceback": row["traceback"] if row["status"] != "succeeded" else None,
        "failed_step": row["failed_step"] if row["status"] != "succeeded" else None,
        "attempts": row["attempts"],
        "max_attempts": row["max_attempts"],
        "queue": row["queue"],
        "priority": row["priority"],
        "trigger": row["trigger"],
        "worker": row["worker_id"],
        "parent_id": row["parent_id"],
        "retry_of": row["retry_of"],
        "idempotency_key": row["idempotency_key"],
        "recoveries": row["recoveries"],
        "cancel_requested": bool(row["cancel_requested"]) and row["status"] not in TERMINAL,
        "created_at": to_iso(row["created_at"]),
        "scheduled_for": to_iso(row["scheduled_for"]),
        "started_at": to_iso(row["started_at"]),
        "finished_at": to_iso(row["finished_at"]),
        "duration_ms": (
            row["finished_at"] - row["started_at"]
            if row["finished_at"] is not None and row["started_at"] is not None
            else None
        ),
    }
    if steps is not None:
        out["steps"] = [step_json(s) for s in steps]
    if events is not None:
        out["events"] = [
            {
                "ts": to_iso(e["ts"]),
                "status": e["status"],
                "attempt": e["attempt"],
                "worker": e["worker_id"],
            }
            for e in events
        ]
    return out


def log_json(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "ts": to_iso(row["ts"]),
        "level": row["level"],
        "step": row["step"],
        "attempt": row["attempt"],
        "message": row["message"],
    }


def worker_json(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "hostname": row["hostname"],
        "pid": row["pid"],
        "queues": row["queues"],
        "concurrency": row["concurrency"],
        "running": row["running"] if row["alive"] else 0,
        "started_at": to_iso(row["started_at"]),
        "last_heartbeat": to_iso(row["last_heartbeat"]),
        "alive": row["alive"],
    }


def empty_queue_json(name: str) -> dict[str, Any]:
    """A queue of ``queues list`` with no run and no worker yet."""
    return {
        "name": name,
        "queued": 0,
        "running": 0,
        "scheduled": 0,
        "oldest_queued_at": None,
        "workers": [],
    }


def queues_json(counts: Iterable[Row], workers: Iterable[Row]) -> list[dict[str, Any]]:
    """Queues with their waiting and running runs and the live workers serving them."""
    queues: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return queues.setdefault(name, empty_queue_json(name))

    for row in counts:
        item = entry(row["queue"])
        item["queued"] = int(row["queued"] or 0)
        item["running"] = int(row["running"] or 0)
        item["scheduled"] = int(row["later"] or 0)
        item["oldest_queued_at"] = to_iso(row["oldest_queued"])
    for worker in workers:
        if worker["alive"]:
            for name in worker["queues"]:
                entry(name)["workers"].append(worker["id"])
    return [queues[name] for name in sorted(queues)]


def stats_json(rows: Iterable[Row], since_ms: int, until_ms: int) -> dict[str, Any]:
    """``{"since", "until", "counts": {status: n}, "by_flow": {flow: {status: n}}}``.

    Terminal statuses count runs that finished within the window and are always present (0
    when none did, so ``counts.succeeded`` answers "how many succeeded?" even when the answer
    is none); the other statuses count runs in that state now, and appear when there are some.
    """
    counts: dict[str, int] = dict.fromkeys(FINISHED, 0)
    by_flow: dict[str, dict[str, int]] = {}
    for row in rows:
        n = int(row["n"])
        counts[row["status"]] = counts.get(row["status"], 0) + n
        flow = by_flow.setdefault(row["flow"], dict.fromkeys(FINISHED, 0))
        flow[row["status"]] = flow.get(row["status"], 0) + n
    return {
        "since": to_iso(since_ms),
        "until": to_iso(until_ms),
        "counts": counts,
        "by_flow": by_flow,
    }


def flow_json(
    flow: FlowRecord, last_run: Row | None = None, next_fire_at: str | None = None
) -> dict[str, Any]:
    return {
        "name": flow.name,
        "description": flow.description,
        "version": flow.version,
        "queue": flow.queue,
        "priority": flow.priority,
        "max_attempts": flow.max_attempts,
        "timeout": flow.timeout_s,
        "retry_policy": serialization.loads(flow.retry_policy),
        "schedules": serialization.loads(flow.schedules) or [],
        "is_async": flow.is_async,
        "updated_at": to_iso(flow.updated_at),
        "last_run": (
            {
                "id": last_run["id"],
                "status": last_run["status"],
                "created_at": to_iso(last_run["created_at"]),
                "finished_at": to_iso(last_run["finished_at"]),
            }
            if last_run
            else None
        ),
        "last_status": last_run["status"] if last_run else None,
        "next_fire_at": next_fire_at,
        # Limits, keys and isolation as declared (docs/flow-control.md); null: none.
        "flow_control": serialization.loads(flow.flow_control),
        "max_recoveries": flow.max_recoveries,
    }


def token_json(row: Row) -> dict[str, Any]:
    """An API token as listed (never the token itself, nor its hash)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "role": row["role"],
        "created_at": to_iso(row["created_at"]),
        "last_used_at": to_iso(row["last_used_at"]),
        "revoked_at": to_iso(row["revoked_at"]),
        "active": row["revoked_at"] is None,
    }


def stats_series_json(
    rows: Iterable[Row], since_ms: int, until_ms: int, bucket_ms: int, flow: str | None = None
) -> dict[str, Any]:
    """Finished runs per time bucket: ``{"since", "until", "bucket_seconds", "flow",
    "series": [{"start", "counts": {status: n}}]}``, every bucket present, oldest first."""
    buckets = max(1, -(-(until_ms - since_ms) // bucket_ms))
    counts: list[dict[str, int]] = [{} for _ in range(buckets)]
    for row in rows:
        index = min(int(row["bucket"]), buckets - 1)
        counts[index][row["status"]] = counts[index].get(row["status"], 0) + int(row["n"])
    return {
        "since": to_iso(since_ms),
        "until": to_iso(until_ms),
        "bucket_seconds": bucket_ms / 1000,
        "flow": flow,
        "series": [
            {"start": to_iso(since_ms + i * bucket_ms), "counts": c} for i, c in enumerate(counts)
        ],
    }
