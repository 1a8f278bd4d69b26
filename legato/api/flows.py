"""Flows with their last run and next fire; schedules; pausing and resuming them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from . import models
from .deps import ClientDep, FlowName, answer, parse_time, text_query, time_query
from .problems import ACT, READ, responses

router = APIRouter()


@router.get("/flows", tags=["flows"], response_model=list[models.Flow], responses=responses(*READ))
def list_flows(client: ClientDep) -> Response:
    """Registered flows with their last run, last status and next scheduled fire."""
    return answer(client.flows())


@router.get(
    "/flows/{name}",
    tags=["flows"],
    response_model=models.FlowDetail,
    responses=responses(*READ, 404),
)
def get_flow(name: FlowName, client: ClientDep) -> Response:
    """One flow: options, parameters, schedules (with their state), recent runs, next fire."""
    return answer(client.flow_overview(name))


@router.post(
    "/flows/{name}/schedules/pause",
    tags=["schedules"],
    response_model=models.Paused,
    responses=responses(*ACT, 404),
)
def pause_schedules(name: FlowName, client: ClientDep) -> Response:
    """Stop firing the flow's schedules."""
    client.set_paused(name, True)
    return answer({"flow": name, "paused": True})


@router.post(
    "/flows/{name}/schedules/resume",
    tags=["schedules"],
    response_model=models.Paused,
    responses=responses(*ACT, 404),
)
def resume_schedules(name: FlowName, client: ClientDep) -> Response:
    """Fire the flow's schedules again (missed fires follow each schedule's catch-up policy)."""
    client.set_paused(name, False)
    return answer({"flow": name, "paused": False})


@router.get(
    "/schedules",
    tags=["schedules"],
    response_model=list[models.ScheduleState],
    responses=responses(*READ, 404),
)
def list_schedules(
    client: ClientDep,
    flow: Annotated[str | None, text_query("Only this flow's schedules.")] = None,
) -> Response:
    """Every schedule with its next and last fire, policies and pause state."""
    return answer(client.schedules(flow))


@router.get(
    "/schedules/upcoming",
    tags=["schedules"],
    response_model=list[models.UpcomingFire],
    responses=responses(*READ, 404),
)
def upcoming_fires(
    client: ClientDep,
    until: Annotated[str | None, time_query("Fires up to this time [default: in 24 h].")] = None,
    flow: Annotated[str | None, text_query("Only this flow.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="At most this many fires.")] = 1000,
) -> Response:
    """Fire times from now up to a time, sorted ("which flows run at the end of the month?").

    A duration in ``until`` counts forward from now (``until=7d``: the next week).
    """
    if until is None:
        until_ms = client.store.now_ms() + 86_400_000
    else:
        until_ms = parse_time(client, until, "until", forward=True)
    return answer(client.upcoming(until_ms, flow, limit))
