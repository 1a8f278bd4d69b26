"""Stats over a window (counts and a time series), workers, queues, and emitting events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from . import models
from .deps import ClientDep, answer, parse_time, text_query, time_query
from .problems import ACT, READ, responses

router = APIRouter()


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
    "/events",
    tags=["events"],
    response_model=list[models.Run],
    responses=responses(*ACT, 413),
)
def emit_event(body: models.EmitEvent, client: ClientDep) -> Response:
    """Emit an event: one run per subscribed flow whose filter matches; returns those runs."""
    return answer(client.emit(body.name, body.payload, idempotency_key=body.idempotency_key))
