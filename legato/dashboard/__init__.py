"""The web dashboard: server-rendered pages (Jinja2 + htmx) over the same service layer as the
CLI and the REST API, served by the API's own application at ``/``.

Every asset (htmx, uPlot, the stylesheet and script) ships inside the package, so the
dashboard works without any network access.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from . import actions, pages
from .render import Renderer
from .security import Forbidden, LoginRequired, identify, server_secret

STATIC = Path(__file__).resolve().parent / "static"


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app`` (which must carry ``app.state.client``)."""
    app.state.dashboard_secret = server_secret()
    app.state.dashboard_renderer = Renderer()
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(Forbidden, _forbidden)


async def _login_required(request: Request, exc: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.headers.get("hx-request"):
        # htmx follows HX-Redirect with a full page load (a plain 3xx would be swapped in).
        return HTMLResponse("", headers={"HX-Redirect": "/login"})
    if request.method != "GET":
        target = "/"
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


async def _forbidden(request: Request, exc: Exception) -> Response:
    viewer = await run_in_threadpool(identify, request, required=False)
    return pages.page(
        request,
        viewer,
        "error.html",
        {"title": "Not allowed", "message": str(exc)},
        status_code=403,
    )


__all__ = ["install"]
