"""Authentication and roles: one dependency on every route (the log stream included).

Callers present ``Authorization: Bearer <token>``; tokens are created with
``legato tokens create`` and stored hashed. What a route needs follows from the request:

- ``viewer``: every read (``GET``), ``/metrics`` included;
- ``operator``: every action (submit, cancel, retry, pause, resume, emit);
- ``admin``: token management (``/api/v1/tokens``).

Without any active token a server bound to a loopback address is open (the one-command
start); once a token exists, or when the server is exposed beyond loopback, every route
needs one. Failures answer 401 or 403 and are logged without the token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from ..client import Client
from ..tokens import ROLES, allows
from .problems import ProblemError, problem_response

log = logging.getLogger("legato.api.auth")

API_PREFIX = "/api/v1"
#: Routes open to anyone: the process probes and the API's own description (no data).
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        f"{API_PREFIX}/openapi.json",
        f"{API_PREFIX}/docs",
        f"{API_PREFIX}/docs/oauth2-redirect",
        f"{API_PREFIX}/redoc",
    }
)

bearer = HTTPBearer(
    auto_error=False,
    description="An API token from `legato tokens create --name N --role viewer|operator|admin`.",
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and role (``anonymous`` on an open server)."""

    name: str
    role: str
    token_id: str | None = None


OPEN = Principal("anonymous", ROLES[-1])


def required_role(method: str, path: str) -> str:
    """The least role allowed to call ``method path``."""
    if path == f"{API_PREFIX}/tokens" or path.startswith(f"{API_PREFIX}/tokens/"):
        return "admin"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "viewer"
    return "operator"


def _client_host(request: Request) -> str:
    return request.client.host if request.client else "?"


def _deny(request: Request, status: int, reason: str) -> ProblemError:
    log.warning(
        "%d %s %s from %s: %s",
        status,
        request.method,
        request.url.path,
        _client_host(request),
        reason,
    )
    if status == 401:
        return ProblemError(
            401, reason, kind="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="legato"'}
        )
    return ProblemError(403, reason, kind="forbidden")


def check(request: Request, token: str | None) -> Principal:
    """Authenticate and authorise ``request`` (blocking: it reads the token table)."""
    client: Client = request.app.state.client
    needed = required_role(request.method, request.url.path)
    if not token:
        if request.app.state.require_auth or client.tokens_exist():
            raise _deny(
                request, 401, "this API needs a token: send 'Authorization: Bearer <token>'"
            )
        return OPEN
    found = client.authenticate(token)
    if found is None:
        raise _deny(request, 401, "invalid or revoked token")
    if not allows(found["role"], needed):
        raise _deny(
            request,
            403,
            f"token {found['name']!r} has role {found['role']}; this needs {needed}",
        )
    return Principal(found["name"], found["role"], found["id"])


def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The dependency every protected route carries."""
    return check(request, credentials.credentials if credentials else None)


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


async def gate(request: Request) -> Response | None:
    """For errors raised before the dependency ran: the 401/403 the caller should get."""
    path = request.url.path
    if path in PUBLIC_PATHS or not (path.startswith(API_PREFIX) or path == "/metrics"):
        return None
    try:
        await run_in_threadpool(check, request, bearer_token(request))
    except ProblemError as exc:
        return problem_response(
            exc.status, exc.detail, kind=exc.kind, instance=path, headers=exc.headers
        )
    return None
