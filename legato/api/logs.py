"""A run's log lines: pages, and a live Server-Sent Events stream that follows the run.

The stream sends each line as an ``event: log`` whose ``id`` is the line's id (a client
that reconnects with ``Last-Event-ID`` resumes after it), comments as keep-alives while
the run is quiet, and one ``event: end`` with the final status once the run has ended and
every line was sent; then it closes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from ..client import Client
from ..store.records import TERMINAL
from . import models
from .deps import ClientDep, RunId, answer
from .problems import READ, responses

router = APIRouter(tags=["logs"])

MAX_ID = 2**62
STREAM_BATCH = 500


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


@router.get("/runs/{run_id}/logs", response_model=models.LogPage, responses=responses(*READ, 404))
def run_logs(
    run_id: RunId,
    client: ClientDep,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="Lines after this id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Lines per page.")] = 1000,
) -> Response:
    """The run's log lines (logging records and print output), oldest first."""
    lines = client.logs(run_id, after_id=after, limit=limit)
    more = len(lines) == limit
    return answer({"items": lines, "next_after": lines[-1]["id"] if more else None})


@router.get(
    "/runs/{run_id}/logs/stream",
    response_class=EventStream,
    responses={
        200: {
            "description": "`event: log` per line (JSON of a log line), then `event: end`.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **responses(*READ, 404),
    },
)
async def stream_logs(
    request: Request,
    run_id: RunId,
    client: ClientDep,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="Start after this line id.")] = 0,
    last_event_id: Annotated[
        str | None, Header(max_length=32, description="Resume after this line id.")
    ] = None,
) -> Response:
    """Follow the run's log lines live until the run ends (Server-Sent Events)."""
    full_id = await run_in_threadpool(client.resolve_run, run_id)
    if last_event_id and last_event_id.strip().isdigit():
        after = max(after, min(int(last_event_id.strip()), MAX_ID))
    poll = float(request.app.state.stream_poll_seconds)
    return EventStream(
        follow(request, client, full_id, after, poll),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event(name: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def follow(
    request: Request,
    client: Client,
    run_id: str,
    after: int,
    poll: float,
    keepalive: float = 15.0,
) -> AsyncIterator[str]:
    """Yield the run's lines as they are written; end once the run ended and all were sent."""
    last = after
    quiet_since = time.monotonic()
    yield "retry: 1000\n\n"
    while not await request.is_disconnected():
        # Read the status before the lines: a line written before the run ended is then
        # always sent before the end event.
        status = await run_in_threadpool(client.store.get_run_status, run_id)
        lines = await run_in_threadpool(client.logs, run_id, last, STREAM_BATCH)
        for line in lines:
            last = line["id"]
            yield _event("log", line, last)
        if lines:
            quiet_since = time.monotonic()
            if len(lines) == STREAM_BATCH:
                continue
        elif status is None or status in TERMINAL:
            yield _event("end", {"id": run_id, "status": status})
            return
        elif time.monotonic() - quiet_since > keepalive:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await anyio.sleep(poll)
