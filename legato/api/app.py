"""The application factory: :func:`create_app` builds the REST API over one store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI

from .. import __version__, dashboard
from ..client import Client
from ..config import Settings
from ..store import Store, open_store
from . import flows, health, logs, metrics, operations, runs, tokens
from .auth import API_PREFIX, authorize, gate
from .limits import BodyLimit
from .problems import MEDIA_TYPE, install

DESCRIPTION = """
Every question and action of Legato over HTTP: runs, their steps, attempts and logs (live
with Server-Sent Events), flows and their schedules, stats, workers and queues; submitting,
cancelling and retrying runs, pausing schedules and emitting events.

Authenticate with `Authorization: Bearer <token>` (tokens: `legato tokens create`). Reads
need the `viewer` role, actions `operator`, token management `admin`. Errors are RFC 9457
problem documents (`application/problem+json`).
"""


def create_app(
    store: Store | str,
    settings: Settings | None = None,
    *,
    require_auth: bool = False,
    stream_poll_seconds: float = 0.25,
) -> FastAPI:
    """The REST API over ``store`` (a store, or a database URL opened now and closed at
    shutdown).

    ``require_auth`` demands a token on every protected route even while no token exists
    (a server exposed beyond loopback). Once any token exists, tokens are required anyway.
    """
    owned = isinstance(store, str)
    opened = open_store(store) if isinstance(store, str) else store
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            opened.close()

    app = FastAPI(
        title="Legato",
        version=__version__,
        description=DESCRIPTION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=f"{API_PREFIX}/redoc",
        swagger_ui_oauth2_redirect_url=f"{API_PREFIX}/docs/oauth2-redirect",
        lifespan=lifespan,
    )
    app.state.client = Client(opened, settings)
    app.state.require_auth = require_auth
    app.state.stream_poll_seconds = stream_poll_seconds

    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(authorize)])
    for module in (runs, logs, flows, operations, tokens):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(metrics.router, dependencies=[Depends(authorize)])
    app.include_router(health.router)
    dashboard.install(app)  # the web dashboard at /

    install(app, gate)
    app.add_middleware(BodyLimit, max_bytes=settings.max_payload_bytes)
    app.openapi = _problem_media_types(app.openapi)  # type: ignore[method-assign]
    return app


def _problem_media_types(generate: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """Document error answers as ``application/problem+json`` (what they are)."""
    done = False

    def openapi() -> dict[str, Any]:
        nonlocal done
        schema = generate()
        if not done:
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    for code, response in operation.get("responses", {}).items():
                        content = response.get("content")
                        if code[:1] in "45" and content:
                            response["content"] = {MEDIA_TYPE: next(iter(content.values()))}
            done = True
        return schema

    return openapi
