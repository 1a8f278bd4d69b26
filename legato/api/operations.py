"""Stats over a window (counts and a time series), workers, queues and their settings, named
limits, and emitting events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from ..limits import check_limit_name
from . import models
from .deps import ClientDep, answer, parse_time, text_query, time_query
from .problems import ACT, READ, responses

router = APIRouter()

QueueName = Annotated[
    str, Path(min_length=1, max_length=200, pattern=models.NO_NUL, description="A queue name.")
]
LimitName = Annotated[
    str, Path(min_length=1, max_length=100, pattern=models.NO_NUL, description="A limit name.")
]


@router.get("/stats", tags=["stats"], response_model=models.Stats, responses=responses(*READ))
def stats(
    client: ClientDep,
    since: Annotated[str | None, time_query("Window start [default: 5m].")] = None,
    flow: Annotated[str | None, text_query("Only this flow.")] = None,
) -> Response:
    """Runs by status, overall and per flow: finished within the window, and active now."""
    return answer(client.stats(parse_time(client, since or "5m", "since"), flow))


@router.get(
    "/stats/series",
    tags=["stats"],
    response_model=models.StatsSeries,
    responses=responses(*READ),
)
def stats_series(
    client: ClientDep,
    since: Annotated[str | None, time_query("Window start [default: 24h].")] = None,
    until: Annotated[str | None, time_query("Window end [default: now].")] = None,
    flow: Annotated[str | None, text_query("Only this flow.")] = None,
    bucket_seconds: Annotated[
        float | None,
        Query(ge=1, le=366 * 86400, description="Bucket width [default: about 100 buckets]."),
    ] = None,
) -> Response:
    """Finished runs by status per time bucket, oldest first (for charts)."""
    return answer(
        client.stats_series(
            parse_time(client, since or "24h", "since"),
            parse_time(client, until, "until") if until else None,
            flow,
            bucket_seconds,
        )
    )


@router.get(
    "/workers", tags=["workers"], response_model=list[models.Worker], responses=responses(*READ)
)
def workers(client: ClientDep) -> Response:
    """Workers with their queues, slots, running runs, last heartbeat and liveness."""
    return answer(client.workers())


@router.get(
    "/queues", tags=["workers"], response_model=list[models.Queue], responses=responses(*READ)
)
def queues(client: ClientDep) -> Response:
    """Queues with waiting and running runs and the live workers serving each."""
    return answer(client.queues())


@router.post(
    "/queues/{name}/pause",
    tags=["workers"],
    response_model=models.QueueState,
    responses=responses(*ACT),
)
def pause_queue(name: QueueName, client: ClientDep) -> Response:
    """Stop every worker from claiming runs of this queue (running runs go on)."""
    return answer(client.set_queue(name, paused=True))


@router.post(
    "/queues/{name}/resume",
    tags=["workers"],
    response_model=models.QueueState,
    responses=responses(*ACT),
)
def resume_queue(name: QueueName, client: ClientDep) -> Response:
    """Let workers claim runs of this queue again."""
    return answer(client.set_queue(name, paused=False))


@router.patch(
    "/queues/{name}",
    tags=["workers"],
    response_model=models.QueueState,
    responses=responses(*ACT, 413),
)
def update_queue(name: QueueName, body: models.QueueSettings, client: ClientDep) -> Response:
    """Change a queue's settings: paused, strict (FIFO, one at a time), concurrency cap."""
    if "concurrency" in body.model_fields_set:
        return answer(
            client.set_queue(
                name, paused=body.paused, strict=body.strict, concurrency=body.concurrency
            )
        )
    return answer(client.set_queue(name, paused=body.paused, strict=body.strict))


@router.get(
    "/limits", tags=["limits"], response_model=list[models.Limit], responses=responses(*READ)
)
def limits(client: ClientDep) -> Response:
    """Every limit (named ones and those flows declare) with its size and current use."""
    return answer(client.limits())


@router.put(
    "/limits/{name}",
    tags=["limits"],
    response_model=models.Limit,
    responses=responses(*ACT, 413),
)
def set_limit(name: LimitName, body: models.SetLimit, client: ClientDep) -> Response:
    """Create or resize a named limit (flows share it with ``limits=[name]``)."""
    return answer(client.set_limit(name, body.concurrency, body.rate))


@router.delete("/limits/{name}", tags=["limits"], status_code=204, responses=responses(*ACT))
def delete_limit(name: LimitName, client: ClientDep) -> Response:
    """Delete a named limit; deleting one that does not exist is not an error."""
    check_limit_name(name)
    if any(item["name"] == name and item["kind"] == "named" for item in client.limits()):
        client.delete_limit(name)
    return Response(status_code=204)


@router.post(
    "/events",
    tags=["events"],
    response_model=list[models.Run],
    responses=responses(*ACT, 413),
)
def emit_event(body: models.EmitEvent, client: ClientDep) -> Response:
    """Emit an event: one run per subscribed flow whose filter matches; returns those runs."""
    return answer(client.emit(body.name, body.payload, idempotency_key=body.idempotency_key))
