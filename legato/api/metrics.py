"""``/metrics``: Prometheus text format, protected like the API.

Gauges read from the database at scrape time, so every server shows the same numbers
whichever process ran the work:

=====================================  ==============================================
``legato_runs{flow,status}``           runs in the database by flow and status
``legato_runs_running``                runs running now
``legato_queue_depth{queue}``          runs due and waiting for a worker
``legato_queue_scheduled{queue}``      runs waiting for a later time (delays, retries)
``legato_queue_running{queue}``        runs of the queue running now
``legato_queue_oldest_age_seconds``    age of the oldest due run of each queue (0 if none)
``legato_queue_workers{queue}``        live workers serving the queue
``legato_workers_alive``               live workers
``legato_worker_slots{worker}``        a live worker's slots, and ``..._running`` in use
``legato_schedule_lag_seconds``        how late each due, unpaused schedule is
``legato_claim_latency_seconds``      due-to-claimed wait of runs finished in the last
                                       5 minutes (summary: quantiles, ``_sum``, ``_count``)
=====================================  ==============================================
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response

from ..client import Client
from ..timeutil import parse_iso, to_ms
from .deps import ClientDep
from .problems import READ, responses

router = APIRouter(tags=["metrics"])

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Sample = tuple[dict[str, str], float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _family(name: str, help_text: str, samples: Iterable[Sample], kind: str = "gauge") -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    out += _samples(name, samples)
    return out


def _samples(name: str, samples: Iterable[Sample]) -> list[str]:
    out = []
    for labels, value in samples:
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        out.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
    return out


def render(client: Client) -> str:
    """The metrics page."""
    now = client.store.now_ms()
    counts = client.run_counts()
    queues = client.queues()
    workers = [w for w in client.workers() if w["alive"]]
    lines: list[str] = []
    lines += _family(
        "legato_runs",
        "Runs in the database by flow and status.",
        (({"flow": c["flow"], "status": c["status"]}, c["count"]) for c in counts),
    )
    lines += _family(
        "legato_runs_running",
        "Runs running now.",
        [({}, sum(c["count"] for c in counts if c["status"] == "running"))],
    )
    lines += _family(
        "legato_queue_depth",
        "Runs due and waiting for a worker.",
        (({"queue": q["name"]}, q["queued"]) for q in queues),
    )
    lines += _family(
        "legato_queue_scheduled",
        "Runs waiting for a later time (delays, retries, durable sleeps).",
        (({"queue": q["name"]}, q["scheduled"]) for q in queues),
    )
    lines += _family(
        "legato_queue_running",
        "Runs of the queue running now.",
        (({"queue": q["name"]}, q["running"]) for q in queues),
    )
    lines += _family(
        "legato_queue_oldest_age_seconds",
        "Age of the oldest due run waiting in the queue (0 when none).",
        (
            (
                {"queue": q["name"]},
                max(0, now - to_ms(parse_iso(q["oldest_queued_at"]))) / 1000
                if q["oldest_queued_at"]
                else 0.0,
            )
            for q in queues
        ),
    )
    lines += _family(
        "legato_queue_workers",
        "Live workers serving the queue.",
        (({"queue": q["name"]}, len(q["workers"])) for q in queues),
    )
    lines += _family("legato_workers_alive", "Live workers.", [({}, len(workers))])
    lines += _family(
        "legato_worker_slots",
        "Run slots of a live worker.",
        (({"worker": w["id"]}, w["concurrency"]) for w in workers),
    )
    lines += _family(
        "legato_worker_running",
        "Runs a live worker is executing.",
        (({"worker": w["id"]}, w["running"]) for w in workers),
    )
    lines += _family(
        "legato_schedule_lag_seconds",
        "How late each due, unpaused schedule is (0 when on time).",
        (
            ({"flow": s["flow"], "schedule": s["schedule"]}, s["lag_seconds"])
            for s in client.schedule_lags()
        ),
    )
    latency = client.claim_latency()
    lines += _family(
        "legato_claim_latency_seconds",
        "Wait from due to claimed of first attempts finished in the last 5 minutes.",
        (({"quantile": q}, v) for q, v in latency["quantiles"].items()),
        kind="summary",
    )
    lines += _samples("legato_claim_latency_seconds_sum", [({}, latency["sum_seconds"])])
    lines += _samples("legato_claim_latency_seconds_count", [({}, latency["count"])])
    return "\n".join(lines) + "\n"


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus text format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **responses(*READ),
    },
)
def metrics(client: ClientDep) -> Response:
    """Prometheus metrics: runs by flow and status, queue depth and age, workers, claim
    latency, schedule lag."""
    return PlainTextResponse(render(client), media_type=CONTENT_TYPE)
