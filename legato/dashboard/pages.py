"""The dashboard's pages (``GET``): overview, flows, flow, runs, run, schedule, workers.

Every page reads through :class:`legato.client.Client`, the service layer the CLI and the REST
API use, so the three always agree. Pages that change while you look (overview, runs, a
running run, workers) refresh their live parts with htmx polling of a fragment route.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response

from ..client import Client
from ..errors import UnknownFlow, UnknownRun
from ..store.records import FINISHED, RUN_STATUSES, TERMINAL
from ..timeutil import parse_duration, to_iso
from . import calendar, timeline
from .render import Renderer, iso_ms
from .security import Viewer, identify, remember_nonce

router = APIRouter(include_in_schema=False)

DAY_MS = 86_400_000
#: Time windows offered by the runs filter.
WINDOWS = (("5m", "5 minutes"), ("1h", "hour"), ("1d", "day"), ("7d", "week"), ("30d", "30 days"))
TRIGGERS = ("manual", "schedule", "subflow", "event", "retry")
PAGE_SIZE = 50
#: The flow page's chart and counts cover this many of its latest runs.
RECENT_RUNS = 300
#: Log lines shown on a run's page at first (the rest: ``legato logs`` or the API).
LOG_LIMIT = 5000
NAV = (
    ("overview", "/", "Overview"),
    ("flows", "/flows", "Flows"),
    ("runs", "/runs", "Runs"),
    ("schedule", "/schedule", "Schedule"),
    ("workers", "/workers", "Workers & queues"),
)


def client_of(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


def page(
    request: Request,
    viewer: Viewer,
    template: str,
    context: dict[str, Any],
    *,
    section: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    """Render ``template`` with what every page needs (who is looking, CSRF, navigation)."""
    renderer: Renderer = request.app.state.dashboard_renderer
    response = renderer.page(
        template,
        {
            "request": request,
            "base": request.scope.get("root_path", ""),
            "viewer": viewer,
            "csrf": viewer.csrf_token,
            "nav": NAV,
            "section": section,
            "path": request.url.path,
            "statuses": RUN_STATUSES,
            **context,
        },
        status_code=status_code,
    )
    remember_nonce(request, response, viewer)
    return response


def not_found(request: Request, viewer: Viewer, message: str, section: str = "") -> HTMLResponse:
    return page(
        request,
        viewer,
        "error.html",
        {"title": "Not found", "message": message},
        section=section,
        status_code=404,
    )


def _ms(run: dict[str, Any], key: str) -> int | None:
    return iso_ms(run.get(key))


# -- overview ---------------------------------------------------------------------------------


MINUTES_PER_DAY = 1440


@router.get("/", response_class=HTMLResponse)
def overview(request: Request) -> Response:
    viewer = identify(request)
    client = client_of(request)
    now = client.store.now_ms()
    live, per_minute = _overview_live(client, now)
    since_s = (now - DAY_MS) // 1000
    chart = {"x": [since_s + 60 * i for i in range(MINUTES_PER_DAY)], "series": per_minute}
    return page(request, viewer, "overview.html", {**live, "chart": chart}, section="overview")


@router.get("/overview/live", response_class=HTMLResponse)
def overview_live(request: Request) -> Response:
    viewer = identify(request)
    client = client_of(request)
    live, _ = _overview_live(client, client.store.now_ms())
    return page(request, viewer, "_overview_live.html", live)


def _overview_live(client: Client, now: int) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """What the overview shows, and the runs finished per minute and status over the last day.

    The 5-minute, hour and day counts are sums of that per-minute series (one query).
    """
    per_minute = {status: [0] * MINUTES_PER_DAY for status in FINISHED}
    for row in client.store.stats_series(now - DAY_MS, now, 60_000):
        if row["status"] in per_minute:
            per_minute[row["status"]][min(int(row["bucket"]), MINUTES_PER_DAY - 1)] += int(row["n"])
    windows = [
        {"label": label, **{s: sum(per_minute[s][-minutes:]) for s in FINISHED}}
        for label, minutes in (("last 5 minutes", 5), ("last hour", 60), ("last day", 1440))
    ]
    active = client.stats(now)["counts"]  # a window of zero: what is active now
    live = {
        "windows": windows,
        "running_count": active.get("running", 0),
        "queued_count": sum(active.get(s, 0) for s in ("queued", "retrying")),
        "later_count": sum(active.get(s, 0) for s in ("scheduled", "sleeping")),
        "running": client.runs_page(status="running", limit=10)["items"],
        "failures": client.runs_page(status="failed", sort="-finished_at", limit=8)["items"],
        "workers": [w for w in client.workers() if w["alive"]],
        "now": to_iso(now),
    }
    return live, per_minute


# -- flows ------------------------------------------------------------------------------------


@router.get("/flows", response_class=HTMLResponse)
def flows_page(request: Request, q: str = "", status: str = "") -> Response:
    viewer = identify(request)
    client = client_of(request)
    now = client.store.now_ms()
    flows = client.flows()
    total = len(flows)
    needle = q.strip().lower()
    if needle:
        flows = [
            f
            for f in flows
            if needle in f["name"].lower() or needle in (f["description"] or "").lower()
        ]
    if status == "never":
        flows = [f for f in flows if f["last_status"] is None]
    elif status:
        flows = [f for f in flows if f["last_status"] == status]
    by_flow = client.stats(now - DAY_MS)["by_flow"]
    schedules: dict[str, list[dict[str, Any]]] = {}
    for s in client.schedules():
        schedules.setdefault(s["flow"], []).append(s)
    rows = []
    for f in flows:
        counts = by_flow.get(f["name"], {})
        ok, bad = counts.get("succeeded", 0), counts.get("failed", 0)
        history = list(reversed(client.runs(flow=f["name"], limit=20)))
        longest = max((r["duration_ms"] or 0 for r in history), default=0)
        rows.append(
            {
                **f,
                "success_rate": None if ok + bad == 0 else round(100 * ok / (ok + bad)),
                "finished_24h": ok + bad + counts.get("cancelled", 0),
                "history": history,
                "longest": longest,
                "schedule_states": schedules.get(f["name"], []),
            }
        )
    return page(
        request,
        viewer,
        "flows.html",
        {"flows": rows, "total": total, "q": q, "status": status},
        section="flows",
    )


@router.get("/flows/{name}", response_class=HTMLResponse)
def flow_page(
    request: Request, name: str, status: str = "", cursor: str = "", fragment: str = ""
) -> Response:
    viewer = identify(request)
    client = client_of(request)
    try:
        if fragment == "runs":
            client.flow(name)
            return page(
                request, viewer, "_runs_table.html", _flow_runs(client, name, status, cursor)
            )
        context = flow_page_context(client, name, status, cursor)
    except UnknownFlow as exc:
        return not_found(request, viewer, str(exc), "flows")
    return page(request, viewer, "flow.html", context, section="flows")


def _flow_runs(client: Client, name: str, status: str, cursor: str) -> dict[str, Any]:
    runs, error = _runs_page(client, {"flow": name, "status": status or None}, cursor, 25)
    return {
        "runs": runs,
        "filters": {"status": status},
        "cursor": cursor,
        "error": error,
        "table_url": f"/flows/{name}",
    }


def flow_page_context(
    client: Client, name: str, status: str = "", cursor: str = ""
) -> dict[str, Any]:
    """Everything the flow page shows (raises :class:`UnknownFlow`)."""
    flow = client.flow_overview(name)
    recent = client.runs(flow=name, limit=RECENT_RUNS)
    points: dict[str, list[tuple[int, float]]] = {"succeeded": [], "failed": []}
    counts: dict[str, int] = {}
    for r in recent:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        if r["duration_ms"] is not None and r["status"] in points:
            points[r["status"]].append((_ms(r, "finished_at") or 0, r["duration_ms"] / 1000))
    return {
        **_flow_runs(client, name, status, cursor),
        "flow": flow,
        "durations": {k: sorted(v) for k, v in points.items()},
        "counts": counts,
        "recent_count": len(recent),
        "params_text": params_template(flow["parameters"]),
        "form": {"params": None, "queue": "", "delay": "", "idempotency_key": ""},
        "trigger_error": None,
    }


def params_template(parameters: list[dict[str, Any]]) -> str:
    """The trigger form's starting JSON: defaults filled in, required parameters empty."""
    values: dict[str, Any] = {}
    for p in parameters:
        if p.get("variadic"):
            continue
        if p.get("required"):
            values[p["name"]] = _placeholder(p.get("annotation"))
        else:
            values[p["name"]] = p.get("default")
    return json.dumps(values, indent=2, ensure_ascii=False)


def _placeholder(annotation: str | None) -> Any:
    kinds: dict[str, Any] = {"int": 0, "float": 0.0, "bool": False, "list": [], "dict": {}}
    return kinds.get((annotation or "").split("[")[0], "")


# -- runs -------------------------------------------------------------------------------------


def _runs_page(
    client: Client, filters: dict[str, Any], cursor: str, limit: int = PAGE_SIZE
) -> tuple[dict[str, Any], str | None]:
    try:
        return client.runs_page(**filters, cursor=cursor or None, limit=limit), None
    except ValueError as exc:
        return {"items": [], "next_cursor": None}, str(exc)


@router.get("/runs", response_class=HTMLResponse)
def runs_page(
    request: Request,
    flow: str = "",
    status: str = "",
    trigger: str = "",
    queue: str = "",
    since: str = "",
    cursor: str = "",
    fragment: str = "",
) -> Response:
    viewer = identify(request)
    client = client_of(request)
    filters: dict[str, Any] = {
        "flow": flow or None,
        "status": status or None,
        "trigger": trigger or None,
        "queue": queue or None,
    }
    error = None
    if since:
        try:
            filters["since_ms"] = client.store.now_ms() - int(
                parse_duration(since).total_seconds() * 1000
            )
        except ValueError as exc:
            error = str(exc)
    runs, page_error = _runs_page(client, filters, cursor)
    query = {"flow": flow, "status": status, "trigger": trigger, "queue": queue, "since": since}
    context: dict[str, Any] = {
        "runs": runs,
        "filters": query,
        "cursor": cursor,
        "error": error or page_error,
        "table_url": "/runs",
        "show_flow": True,
    }
    if fragment == "table":
        return page(request, viewer, "_runs_table.html", context)
    flow_names = [f.name for f in client.store.list_flows()]
    queues = sorted({q["name"] for q in client.queues()} | {f_q for f_q in _flow_queues(client)})
    context.update(
        flow_names=flow_names,
        queues=queues,
        windows=WINDOWS,
        triggers=TRIGGERS,
        filtered=any(query.values()),
    )
    return page(request, viewer, "runs.html", context, section="runs")


def _flow_queues(client: Client) -> set[str]:
    return {f.queue for f in client.store.list_flows()}


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str) -> Response:
    viewer = identify(request)
    client = client_of(request)
    try:
        context = _run_context(client, run_id, 0)
    except UnknownRun as exc:
        return not_found(request, viewer, str(exc), "runs")
    return page(request, viewer, "run.html", context, section="runs")


@router.get("/runs/{run_id}/live", response_class=HTMLResponse)
def run_live(request: Request, run_id: str, after: int = 0) -> Response:
    """The live part of a run's page, and its log lines after ``after`` (appended)."""
    viewer = identify(request)
    client = client_of(request)
    try:
        context = _run_context(client, run_id, max(0, after))
    except UnknownRun as exc:
        return not_found(request, viewer, str(exc), "runs")
    return page(request, viewer, "_run_live.html", {**context, "append_logs": True})


def _run_context(client: Client, run_id: str, after: int) -> dict[str, Any]:
    run = client.run(run_id)
    now = client.store.now_ms()
    logs = client.logs(run["id"], after_id=after, limit=LOG_LIMIT)
    tries = timeline.attempts(run)
    finished = _ms(run, "finished_at")
    # Keep following a few seconds after the end: the last log lines may land just after.
    live = run["status"] not in TERMINAL or (finished is not None and now - finished < 3000)
    return {
        "run": run,
        "tries": tries,
        "timeline": timeline.build(run, tries, now),
        "step_running": {
            s["position"]: ms
            for s in run.get("steps") or []
            if (ms := timeline.step_running_ms(s, tries, now)) is not None
        },
        "logs": logs,
        "last_log_id": logs[-1]["id"] if logs else after,
        "log_limit_hit": len(logs) >= LOG_LIMIT,
        "live": live,
        "now": to_iso(now),
        "children": client.runs(parent_id=run["id"], limit=100),
    }


# -- schedule ---------------------------------------------------------------------------------


@router.get("/schedule", response_class=HTMLResponse)
def schedule_page(request: Request, view: str = "month", day: str = "", flow: str = "") -> Response:
    viewer = identify(request)
    client = client_of(request)
    tz = calendar.zone(unquote(request.cookies.get("legato_tz", "")))
    if view not in calendar.VIEWS:
        view = "month"
    anchor = None
    if day:
        with contextlib.suppress(ValueError):
            anchor = date.fromisoformat(day)
    if anchor is None:
        anchor = datetime.fromtimestamp(client.store.now_ms() / 1000, UTC).astimezone(tz).date()
    error = None
    try:
        cal = calendar.build(client, view, anchor, tz, flow or None)
    except UnknownFlow as exc:  # an unknown flow in the filter: show everything instead
        error, flow = str(exc), ""
        cal = calendar.build(client, view, anchor, tz, None)
    return page(
        request,
        viewer,
        "schedule.html",
        {
            "cal": cal,
            "schedules": client.schedules(),
            "flow_filter": flow,
            "error": error,
            "views": calendar.VIEWS,
        },
        section="schedule",
    )


# -- workers and queues -----------------------------------------------------------------------


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request) -> Response:
    viewer = identify(request)
    return page(request, viewer, "workers.html", _workers(client_of(request)), section="workers")


@router.get("/workers/live", response_class=HTMLResponse)
def workers_live(request: Request) -> Response:
    viewer = identify(request)
    return page(request, viewer, "_workers_live.html", _workers(client_of(request)))


def _workers(client: Client) -> dict[str, Any]:
    now = client.store.now_ms()
    workers = client.workers()
    queues = client.queues()
    by_id = {w["id"]: w for w in workers}
    for q in queues:
        oldest = iso_ms(q["oldest_queued_at"])
        q["oldest_age_ms"] = now - oldest if oldest is not None else None
        serving = [by_id[w] for w in q["workers"] if w in by_id]
        q["slots"] = sum(w["concurrency"] for w in serving)
        q["busy"] = sum(w["running"] for w in serving)
    alive = [w for w in workers if w["alive"]]
    return {
        "workers": workers,
        "queues": queues,
        "alive_count": len(alive),
        "slots": sum(w["concurrency"] for w in alive),
        "busy": sum(w["running"] for w in alive),
        "now": to_iso(now),
    }
