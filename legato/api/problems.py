"""RFC 9457 problem details: the body of every 4xx and 5xx answer of the API.

``{"type", "title", "status", "detail"}`` as ``application/problem+json``; validation
problems add ``errors`` (where and what). Bad input is a 4xx, never a 500: the handlers
below map Legato's own errors, validation errors, and values a database refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidState,
    PayloadTooLarge,
    SerializationError,
    UnknownFlow,
    UnknownRun,
    UnknownToken,
)

log = logging.getLogger("legato.api")

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:legato:problem:"


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem (`about:blank`: see status).")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(default=None, description="What went wrong this time.")
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Invalid input: where (`loc`) and why (`msg`)."
    )


class ProblemError(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.headers = headers


def problem_response(
    status: int,
    detail: str | None,
    *,
    kind: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A problem document; ``kind`` names a Legato problem type, else ``about:blank``."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + kind if kind else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


Gate = Callable[[Request], Awaitable[Response | None]]

# Legato errors and the status they answer with.
_MAPPED: tuple[tuple[type[Exception], int, str], ...] = (
    (UnknownRun, 404, "unknown-run"),
    (UnknownFlow, 404, "unknown-flow"),
    (UnknownToken, 404, "unknown-token"),
    (InvalidState, 409, "invalid-state"),
    (PayloadTooLarge, 413, "payload-too-large"),
    (SerializationError, 422, "invalid-input"),
    (ConfigurationError, 422, "invalid-input"),
    (ValueError, 422, "invalid-input"),  # includes UnicodeError
    (OverflowError, 422, "invalid-input"),
    (psycopg.DataError, 422, "invalid-input"),  # a value PostgreSQL refuses (NUL, range)
    (DatabaseUnavailable, 503, "database-unavailable"),
)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors without the echoed input (which may be huge or not JSON)."""
    out = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        msg = str(err.get("msg", ""))
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error")
            at = f" at position {loc[1]}" if len(loc) > 1 else ""
            loc, msg = ["body"], f"not valid JSON ({reason}){at}" if reason else "not valid JSON"
        out.append({"loc": loc, "msg": msg})
    return out


def install(app: FastAPI, gate: Gate) -> None:
    """Answer every error with a problem document.

    ``gate`` runs first for framework-level rejections (invalid input, unknown path): an
    unauthenticated caller learns nothing from a 422 before it has shown a token.
    """

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return problem_response(
            exc.status,
            exc.detail,
            kind=exc.kind,
            instance=request.url.path,
            headers=exc.headers,
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        denied = await gate(request)
        if denied is not None:
            return denied
        detail = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint at {request.url.path}"
        if exc.status_code == 400:  # a body that cannot be decoded: invalid input too
            return problem_response(
                422,
                f"body: {detail or 'cannot be read'}",
                kind="invalid-input",
                instance=request.url.path,
            )
        return problem_response(
            exc.status_code,
            detail,
            instance=request.url.path,
            headers=dict(exc.headers) if exc.headers else None,
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        denied = await gate(request)
        if denied is not None:
            return denied
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:] if first["loc"][:1] == ["body"] else first["loc"])
        where = where or ("body" if first["loc"] == ["body"] else "request")
        return problem_response(
            422,
            f"{where}: {first['msg']}",
            kind="invalid-input",
            instance=request.url.path,
            errors=errors,
        )

    async def on_mapped(request: Request, exc: Exception) -> Response:
        for kind_of, status, kind in _MAPPED:
            if isinstance(exc, kind_of):
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
                if status >= 500:
                    log.error("%s %s: %s", request.method, request.url.path, detail)
                return problem_response(status, detail, kind=kind, instance=request.url.path)
        raise exc  # pragma: no cover - only mapped types are registered

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return problem_response(
            500,
            "internal error: see the server log",
            kind="internal-error",
            instance=request.url.path,
        )

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    for kind_of, _, _ in _MAPPED:
        app.add_exception_handler(kind_of, on_mapped)
    app.add_exception_handler(Exception, on_unexpected)


_DESCRIPTIONS = {
    401: "No token, or an invalid or revoked one.",
    403: "The token's role does not allow this.",
    404: "No such run, flow or token.",
    409: "Not allowed in the current state.",
    413: "The request body is over the configured limit (LEGATO_MAX_PAYLOAD_BYTES).",
    422: "Invalid input.",
    503: "The database is unreachable.",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem answers a route may give."""
    return {code: {"model": Problem, "description": _DESCRIPTIONS[code]} for code in codes}


READ = (401, 422, 503)
ACT = (401, 403, 422, 503)
