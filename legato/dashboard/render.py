"""Templates and the small formatting helpers they use: durations, statuses, times."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.responses import HTMLResponse

from ..store.records import TERMINAL
from ..timeutil import parse_iso

#: Each status has a colour (from the Okabe-Ito palette, readable with colour blindness), an
#: icon and its name, so that colour is never the only cue.
STATUS_ICONS = {
    "scheduled": "◷",
    "queued": "…",
    "retrying": "↻",
    "sleeping": "☾",
    "running": "▶",
    "succeeded": "✓",
    "failed": "✗",
    "cancelled": "⊘",
    "alive": "●",
    "dead": "○",
    "paused": "❚❚",
    "active": "▶",
}
STATUS_COLOURS = {
    "succeeded": "#009E73",
    "failed": "#D55E00",
    "running": "#0072B2",
    "cancelled": "#555555",
    "retrying": "#E69F00",
    "queued": "#7a7a7a",
    "scheduled": "#CC79A7",
    "sleeping": "#56B4E9",
}

#: Content Security Policy of every dashboard page: nothing is loaded from elsewhere, no inline
#: script runs, and no other site may frame the dashboard.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'"
)


def duration(ms: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``, ``3 d 4 h``."""
    if ms is None:
        return "—"
    ms = max(0.0, float(ms))
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def iso_ms(iso: str | None) -> int | None:
    """An ISO 8601 time (as the serializers write them) in epoch milliseconds."""
    if not iso:
        return None
    return int(parse_iso(iso).timestamp() * 1000)


def utc_text(iso: str | None) -> str:
    if not iso:
        return "—"
    dt = parse_iso(iso).astimezone(UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def time_tag(iso: str | None, fmt: str = "datetime") -> Markup:
    """A ``<time>`` element; the dashboard's script shows it in the browser's time zone (or
    relative to now with ``fmt="relative"``) and puts the UTC time in its tooltip."""
    if not iso:
        return Markup('<span class="muted">—</span>')
    text = utc_text(iso)
    return Markup('<time datetime="{}" data-format="{}" title="{}">{}</time>').format(
        iso, fmt, text, text
    )


def badge(status: str | None, label: str | None = None) -> Markup:
    """A status badge: colour, icon and name."""
    if not status:
        return Markup('<span class="muted">never run</span>')
    icon = STATUS_ICONS.get(status, "•")
    return Markup(
        '<span class="badge s-{}"><span class="icon" aria-hidden="true">{}</span>{}</span>'
    ).format(status, icon, label or status)


def short_id(run_id: str | None) -> str:
    return (run_id or "")[:16]


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def error_line(error: str | None) -> str:
    """The first line of an error message."""
    if not error:
        return ""
    return error.strip().splitlines()[0] if error.strip() else ""


_EVERY = re.compile(r"^every (\d+(?:\.\d+)?)s$")


def schedule_text(described: str) -> str:
    """A schedule's description with its interval made human: ``every 21600s`` -> ``every 6 h``."""
    match = _EVERY.match(described)
    if not match:
        return described
    seconds = float(match.group(1))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"every {seconds / size:g} {unit}"
    return f"every {seconds:g} s"


def between(start: str | None, end: str | None) -> str:
    """The human duration between two ISO 8601 times."""
    a, b = iso_ms(start), iso_ms(end)
    return duration(b - a) if a is not None and b is not None else "—"


def percent(part: float, whole: float) -> float:
    return 0.0 if whole <= 0 else max(0.0, min(100.0, 100.0 * part / whole))


def script_json(value: Any) -> Markup:
    """JSON safe to put inside ``<script type="application/json">``."""
    text = json.dumps(value, separators=(",", ":"), default=str)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def query(params: dict[str, Any], **overrides: Any) -> str:
    """``?a=1&b=2`` from the non-empty values of ``params`` updated with ``overrides``."""
    merged = {**params, **overrides}
    pairs = [(k, str(v)) for k, v in merged.items() if v not in (None, "")]
    return "?" + urlencode(pairs) if pairs else ""


def log_lines(logs: list[dict[str, Any]], flow: str) -> Markup:
    """Log lines as HTML, built directly: a run page may show thousands of them."""
    out = []
    for line in logs:
        level = line["level"]
        step = line["step"] or flow
        if line["attempt"] > 1:
            step = f"{step}#{line['attempt']}"
        ts = line["ts"]
        out.append(
            f'<div class="log l-{html.escape(level.lower())}" data-level="{html.escape(level)}">'
            f'<time datetime="{ts}" data-format="clock">{ts[11:23]}</time> '
            f'<span class="lvl">{html.escape(level)}</span> '
            f'<span class="step">{html.escape(step)}</span> '
            f'<span class="msg">{html.escape(line["message"], quote=False)}</span></div>'
        )
    return Markup("\n".join(out))


def make_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("legato.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        duration=duration,
        time=time_tag,
        badge=badge,
        short_id=short_id,
        pretty_json=pretty_json,
        error_line=error_line,
        script_json=script_json,
        schedule=schedule_text,
        log_lines=log_lines,
    )
    env.globals.update(
        percent=percent,
        query=query,
        between=between,
        status_colours=STATUS_COLOURS,
        terminal=TERMINAL,
        utc_text=utc_text,
    )
    return env


class Renderer:
    """Renders a template into an HTML response with the dashboard's security headers."""

    def __init__(self) -> None:
        self.env = make_environment()

    def page(
        self,
        name: str,
        context: dict[str, Any],
        *,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        html = self.env.get_template(name).render(context)
        response = HTMLResponse(html, status_code=status_code, headers=headers)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


__all__ = ["Renderer", "badge", "duration", "escape", "time_tag"]
