"""Probes: ``/healthz`` (the process answers) and ``/readyz`` (database reachable, migrated).

They are open to anyone (orchestrators call them without tokens) and reveal no data.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from . import models
from .deps import ClientDep, answer
from .problems import problem_response, responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=models.Health)
def healthz() -> Response:
    """The process is up."""
    return answer({"status": "ok"})


@router.get("/readyz", response_model=models.Readiness, responses=responses(503))
def readyz(client: ClientDep) -> Response:
    """The database is reachable and its schema is at the version this code needs."""
    state = client.readiness()
    if state["ready"]:
        return answer(state)
    detail = (
        f"database {state['database']}"
        if state["database"] != "ok"
        else f"schema at {state['schema']}, expected {state['expected_schema']}: "
        "run `legato db upgrade`"
    )
    return problem_response(503, detail, kind="not-ready", instance="/readyz")
