"""What the dashboard does (``POST``): trigger, cancel, retry, pause, resume, log in and out.

Every action checks the form's CSRF token and the viewer's role (``operator`` for actions),
then goes through :class:`legato.client.Client` like the CLI and the API, and answers with a
redirect to the page that shows the result (post/redirect/get).
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from ..errors import InvalidState, LegatoError, UnknownFlow, UnknownRun
from ..timeutil import parse_duration
from .pages import client_of, flow_page_context, not_found, page
from .security import (
    Forbidden,
    Viewer,
    auth_enabled,
    check_csrf,
    end_session,
    identify,
    safe_next,
    start_session,
)

router = APIRouter(include_in_schema=False)
log = logging.getLogger("legato.dashboard")

CsrfField = Annotated[str, Form(max_length=200)]
NextField = Annotated[str, Form(max_length=2000)]


def _operator(request: Request, csrf: str, what: str) -> Viewer:
    viewer = identify(request)
    check_csrf(request, viewer, csrf)
    if not viewer.can_operate:
        raise Forbidden(
            f"your token {viewer.name!r} has role {viewer.role}: {what} needs the operator role"
        )
    return viewer


def _back(target: str, fallback: str) -> RedirectResponse:
    return RedirectResponse(safe_next(target) if target else fallback, status_code=303)


# -- runs -------------------------------------------------------------------------------------


@router.post("/runs/{run_id}/cancel")
def cancel(request: Request, run_id: str, csrf: CsrfField = "") -> Response:
    viewer = _operator(request, csrf, "cancelling a run")
    client = client_of(request)
    try:
        status = client.cancel(run_id)
    except UnknownRun as exc:
        return not_found(request, viewer, str(exc), "runs")
    log.info("dashboard: %s cancelled run %s (now %s)", viewer.name, run_id, status)
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/retry")
def retry(request: Request, run_id: str, csrf: CsrfField = "") -> Response:
    viewer = _operator(request, csrf, "retrying a run")
    client = client_of(request)
    try:
        new = client.retry(run_id)
    except UnknownRun as exc:
        return not_found(request, viewer, str(exc), "runs")
    except InvalidState as exc:
        return page(
            request,
            viewer,
            "error.html",
            {"title": "Cannot retry", "message": str(exc), "back": f"/runs/{run_id}"},
            section="runs",
            status_code=409,
        )
    log.info("dashboard: %s retried run %s as %s", viewer.name, run_id, new["id"])
    return RedirectResponse(f"/runs/{new['id']}", status_code=303)


# -- flows ------------------------------------------------------------------------------------


@router.post("/flows/{name}/trigger")
def trigger(
    request: Request,
    name: str,
    csrf: CsrfField = "",
    params: Annotated[str, Form(max_length=1_000_000)] = "{}",
    queue: Annotated[str, Form(max_length=200)] = "",
    delay: Annotated[str, Form(max_length=50)] = "",
    idempotency_key: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    viewer = _operator(request, csrf, "triggering a flow")
    client = client_of(request)
    form = {"params": params, "queue": queue, "delay": delay, "idempotency_key": idempotency_key}
    try:
        values: Any = json.loads(params or "{}")
        if not isinstance(values, dict):
            raise ValueError('the parameters must be a JSON object, like {"day": "2026-11-24"}')
        delay_s = parse_duration(delay).total_seconds() if delay.strip() else None
        run, _ = client.submit(
            name,
            values,
            queue=queue.strip() or None,
            delay_seconds=delay_s,
            idempotency_key=idempotency_key.strip() or None,
        )
    except UnknownFlow as exc:
        return not_found(request, viewer, str(exc), "flows")
    except json.JSONDecodeError as exc:
        return _trigger_error(request, viewer, name, form, f"invalid JSON: {exc}")
    except (ValueError, LegatoError) as exc:
        return _trigger_error(request, viewer, name, form, str(exc))
    log.info("dashboard: %s triggered %s: run %s", viewer.name, name, run["id"])
    return RedirectResponse(f"/runs/{run['id']}", status_code=303)


def _trigger_error(
    request: Request, viewer: Viewer, name: str, form: dict[str, str], message: str
) -> Response:
    context = flow_page_context(client_of(request), name)
    context.update(form=form, params_text=form["params"], trigger_error=message)
    return page(request, viewer, "flow.html", context, section="flows", status_code=400)


@router.post("/flows/{name}/pause")
def pause(request: Request, name: str, csrf: CsrfField = "", next: NextField = "") -> Response:
    return _set_paused(request, name, csrf, next, True)


@router.post("/flows/{name}/resume")
def resume(request: Request, name: str, csrf: CsrfField = "", next: NextField = "") -> Response:
    return _set_paused(request, name, csrf, next, False)


def _set_paused(request: Request, name: str, csrf: str, target: str, paused: bool) -> Response:
    viewer = _operator(request, csrf, "pausing schedules" if paused else "resuming schedules")
    try:
        client_of(request).set_paused(name, paused)
    except UnknownFlow as exc:
        return not_found(request, viewer, str(exc), "flows")
    log.info(
        "dashboard: %s %s the schedules of %s", viewer.name, "paused" if paused else "resumed", name
    )
    return _back(target, f"/flows/{name}")


# -- login ------------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:
    viewer = identify(request, required=False)
    if not auth_enabled(request) or viewer.role:
        return RedirectResponse(safe_next(next), status_code=303)
    return page(request, viewer, "login.html", {"next": safe_next(next), "error": None})


@router.post("/login")
def login(
    request: Request,
    csrf: CsrfField = "",
    token: Annotated[str, Form(max_length=500)] = "",
    next: NextField = "/",
) -> Response:
    viewer = identify(request, required=False)
    check_csrf(request, viewer, csrf)
    found = client_of(request).authenticate(token.strip()) if token.strip() else None
    if found is None:
        log.warning(
            "dashboard: failed login from %s", request.client.host if request.client else "?"
        )
        return page(
            request,
            viewer,
            "login.html",
            {"next": safe_next(next), "error": "This token is unknown or revoked."},
            status_code=401,
        )
    response = RedirectResponse(safe_next(next), status_code=303)
    start_session(request, response, found["id"])
    log.info("dashboard: %s logged in (role %s)", found["name"], found["role"])
    return response


@router.post("/logout")
def logout(request: Request, csrf: CsrfField = "") -> Response:
    viewer = identify(request, required=False)
    check_csrf(request, viewer, csrf)
    response = RedirectResponse("/login" if auth_enabled(request) else "/", status_code=303)
    end_session(response)
    return response
