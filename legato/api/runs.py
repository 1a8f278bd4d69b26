"""Runs: list (filters, keyset pages, sorting), one run, submit, cancel, retry."""

from __future__ import annotations

from typing import Annotated, Literal, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from ..client import RUN_SORTS
from ..store.records import RUN_STATUSES
from ..timeutil import to_ms
from . import models
from .deps import ClientDep, RunId, answer, parse_time, text_query, time_query
from .problems import ACT, READ, ProblemError, responses

router = APIRouter(tags=["runs"])

Status = Literal[
    "scheduled", "queued", "retrying", "sleeping", "running", "succeeded", "failed", "cancelled"
]
Sort = Literal["-created_at", "created_at", "-finished_at", "finished_at"]
Trigger = Literal["manual", "schedule", "subflow", "event", "retry"]
assert get_args(Status) == RUN_STATUSES and get_args(Sort) == RUN_SORTS


@router.get("/runs", response_model=models.RunPage, responses=responses(*READ))
def list_runs(
    request: Request,
    client: ClientDep,
    flow: Annotated[str | None, text_query("Only runs of this flow.")] = None,
    status: Annotated[Status | None, Query(description="Only runs in this status.")] = None,
    since: Annotated[str | None, time_query("Created at or after.")] = None,
    until: Annotated[str | None, time_query("Created before.")] = None,
    trigger: Annotated[Trigger | None, Query(description="Only runs started this way.")] = None,
    queue: Annotated[str | None, text_query("Only runs of this queue.")] = None,
    parent_id: Annotated[str | None, text_query("Only subflow runs of this parent.")] = None,
    sort: Annotated[
        Sort, Query(description="created_at or finished_at; a leading - for newest first.")
    ] = "-created_at",
    limit: Annotated[int, Query(ge=1, le=1000, description="Runs per page.")] = 50,
    cursor: Annotated[
        str | None,
        Query(
            max_length=1000,
            pattern=r"^[A-Za-z0-9_\-]*$",
            description="next_cursor of the previous page.",
        ),
    ] = None,
) -> Response:
    """Runs matching the filters, one page at a time (keyset pagination)."""
    page = client.runs_page(
        flow=flow,
        status=status,
        since_ms=parse_time(client, since, "since") if since else None,
        until_ms=parse_time(client, until, "until") if until else None,
        trigger=trigger,
        queue=queue,
        parent_id=parent_id,
        sort=sort,
        limit=limit,
        cursor=cursor or None,
    )
    headers = {}
    if page["next_cursor"]:
        query = dict(request.query_params)
        query["cursor"] = page["next_cursor"]
        headers["Link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'
    return answer(page, headers=headers)


@router.get("/runs/{run_id}", response_model=models.Run, responses=responses(*READ, 404))
def get_run(run_id: RunId, client: ClientDep) -> Response:
    """One run with its steps (which one failed, with its stack trace), attempts and events."""
    return answer(client.run(run_id))


@router.post(
    "/runs",
    response_model=models.Run,
    status_code=201,
    responses={
        200: {"model": models.Run, "description": "The run this idempotency key created before."},
        **responses(*ACT, 404, 413),
    },
)
def submit_run(body: models.SubmitRun, client: ClientDep) -> Response:
    """Create a run of a registered flow (parameters checked against its signature)."""
    if body.at is not None and body.delay_seconds is not None:
        raise ProblemError(
            422, "give either 'at' or 'delay_seconds', not both", kind="invalid-input"
        )
    if body.at is not None and not -(2**62) < to_ms(body.at) < 2**62:
        raise ProblemError(422, "'at' is out of range", kind="invalid-input")
    run, created = client.submit(
        body.flow,
        body.params,
        queue=body.queue,
        at=body.at,
        delay_seconds=body.delay_seconds,
        idempotency_key=body.idempotency_key,
        priority=body.priority,
    )
    return answer(
        run,
        status_code=201 if created else 200,
        headers={"Location": f"/api/v1/runs/{run['id']}"},
    )


@router.post(
    "/runs/{run_id}/cancel",
    response_model=models.Cancelled,
    responses=responses(*ACT, 404, 409),
)
def cancel_run(run_id: RunId, client: ClientDep) -> Response:
    """Cancel a waiting run at once, or ask a running run to stop at its next step."""
    full_id = client.resolve_run(run_id)
    status = client.cancel(full_id)
    if status not in ("cancelled", "running"):
        raise ProblemError(
            409, f"run {full_id} already ended ({status}); nothing to cancel", kind="invalid-state"
        )
    return answer({"id": full_id, "status": status})


@router.post(
    "/runs/{run_id}/retry",
    response_model=models.Run,
    status_code=201,
    responses=responses(*ACT, 404, 409),
)
def retry_run(run_id: RunId, client: ClientDep) -> Response:
    """Run a finished run again: a new run (trigger ``retry``) with the same parameters."""
    run = client.retry(run_id)
    return answer(run, status_code=201, headers={"Location": f"/api/v1/runs/{run['id']}"})
