"""A run's attempts and its Gantt timeline, computed from its events and steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .render import duration, iso_ms

#: What the status that follows a ``running`` event says about that attempt.
OUTCOMES = {
    "succeeded": ("succeeded", "succeeded"),
    "failed": ("failed", "failed"),
    "cancelled": ("cancelled", "cancelled"),
    "retrying": ("failed", "failed, retried later"),
    "queued": ("queued", "handed back or recovered"),
    "scheduled": ("queued", "handed back"),
    "sleeping": ("sleeping", "sleeping (slot released)"),
}


@dataclass
class Attempt:
    number: int
    worker: str | None
    started_at: str
    ended_at: str | None
    status: str
    outcome: str
    duration_ms: int | None


@dataclass
class Bar:
    left: float
    width: float
    status: str
    title: str


@dataclass
class Row:
    label: str
    status: str
    kind: str  # "attempts" | "step"
    bars: list[Bar] = field(default_factory=list)
    failing: bool = False


@dataclass
class Timeline:
    span_ms: int
    rows: list[Row]
    ticks: list[tuple[float, str]]


def attempts(run: dict[str, Any]) -> list[Attempt]:
    """Each time the run ran: who ran it, from when to when, and how it ended."""
    events = run.get("events") or []
    out: list[Attempt] = []
    for i, event in enumerate(events):
        if event["status"] != "running":
            continue
        following = events[i + 1] if i + 1 < len(events) else None
        if following is None:
            status, outcome, ended = "running", "running", None
        else:
            status, outcome = OUTCOMES.get(
                following["status"], (following["status"], following["status"])
            )
            if following["status"] in ("queued", "scheduled") and _retried(run, events, i):
                status, outcome = "failed", "failed, retried"
            ended = following["ts"]
        start_ms, end_ms = iso_ms(event["ts"]), iso_ms(ended)
        out.append(
            Attempt(
                number=event["attempt"],
                worker=event["worker"],
                started_at=event["ts"],
                ended_at=ended,
                status=status,
                outcome=outcome,
                duration_ms=(end_ms - start_ms) if start_ms is not None and end_ms else None,
            )
        )
    return out


def _retried(run: dict[str, Any], events: list[dict[str, Any]], index: int) -> bool:
    """Whether the attempt that ``events[index]`` started failed and was retried (rather than
    handed back or recovered, which continue the same attempt)."""
    number = events[index]["attempt"]
    for later in events[index + 1 :]:
        if later["status"] == "running":
            return bool(later["attempt"] > number)
    return run["error"] is not None


def _bar(t0: int, span: int, start: int, end: int, status: str, title: str) -> Bar:
    left = 100.0 * (start - t0) / span
    width = max(0.6, 100.0 * (end - start) / span)
    left = min(left, 100.0 - width)
    return Bar(round(max(0.0, left), 3), round(width, 3), status, title)


#: One attempt's window on the time axis: (attempt number, start ms, end ms, its status).
Window = tuple[int, int, int, str]


def _windows(tries: list[Attempt], start_ms: int, end_ms: int) -> list[Window]:
    """The attempts as time windows; an unknown start or a running end falls back to the
    given bounds."""
    return [
        (a.number, iso_ms(a.started_at) or start_ms, iso_ms(a.ended_at) or end_ms, a.status)
        for a in tries
    ]


def _pieces(start: int, end: int, windows: list[Window]) -> list[Window]:
    """The parts of ``start..end`` inside each attempt window it overlaps.

    A step record spans from its first start to its last finish. When the run was retried or
    recovered in between, the time between the attempts is not the step running: only these
    pieces are.
    """
    return [
        (n, max(start, w0), min(end, w1), how)
        for n, w0, w1, how in windows
        if w0 < end and w1 > start
    ]


def _step_bars(
    t0: int, span: int, step: dict[str, Any], start: int, end: int, windows: list[Window]
) -> list[Bar]:
    """A step's bars: one per attempt of the run it ran in, each earlier piece drawn with how
    its attempt ended."""
    pieces = _pieces(start, end, windows)
    if len(pieces) < 2:
        label = f"{step['name']}: {step['status']}, {duration(end - start)}" + (
            f", {step['attempts']} attempts" if step["attempts"] > 1 else ""
        )
        return [_bar(t0, span, start, end, step["status"], label)]
    bars = []
    for i, (number, p0, p1, how) in enumerate(pieces):
        last = i == len(pieces) - 1
        status = step["status"] if last else how
        outcome = step["status"] if last else ("failed" if how == "failed" else "interrupted")
        title = f"{step['name']} in attempt {number}: {outcome}, {duration(p1 - p0)}"
        bars.append(_bar(t0, span, p0, p1, status, title))
    return bars


def step_running_ms(step: dict[str, Any], tries: list[Attempt], now_ms: int) -> int | None:
    """How long a step that ran in several attempts of its run actually ran (the sum of its
    pieces inside the attempts), or None when it ran within one attempt (its span is then its
    running time)."""
    start = iso_ms(step["started_at"])
    if start is None:
        return None
    pieces = _pieces(start, iso_ms(step["finished_at"]) or now_ms, _windows(tries, start, now_ms))
    return sum(p1 - p0 for _, p0, p1, _ in pieces) if len(pieces) > 1 else None


def build(run: dict[str, Any], tries: list[Attempt], now_ms: int) -> Timeline | None:
    """The Gantt chart: one row of attempts, then one row per step, on one time axis."""
    starts = [iso_ms(a.started_at) for a in tries] + [
        iso_ms(s["started_at"]) for s in run.get("steps") or []
    ]
    starts_known = [s for s in starts if s is not None]
    if not starts_known:
        return None
    t0 = min(starts_known)
    t1 = iso_ms(run["finished_at"]) or now_ms
    ends = [iso_ms(a.ended_at) for a in tries] + [
        iso_ms(s["finished_at"]) for s in run.get("steps") or []
    ]
    t1 = max([t1, *[e for e in ends if e is not None]])
    span = max(1, t1 - t0)
    attempt_row = Row("attempts", run["status"], "attempts")
    for a in tries:
        start = iso_ms(a.started_at) or t0
        end = iso_ms(a.ended_at) or t1
        attempt_row.bars.append(
            _bar(
                t0,
                span,
                start,
                end,
                a.status,
                f"attempt {a.number}: {a.outcome}, {duration(end - start)}",
            )
        )
    rows = [attempt_row]
    windows = _windows(tries, t0, t1)
    failed_step = run.get("failed_step")
    # One row per step name: a step called in a loop is one row with a bar per call.
    by_name: dict[str, Row] = {}
    calls: dict[str, int] = {}
    for step in run.get("steps") or []:
        start = iso_ms(step["started_at"]) or t0
        end = iso_ms(step["finished_at"]) or t1
        failing = step["status"] == "failed" or step["name"] == failed_step
        row = by_name.get(step["name"])
        if row is None:
            row = by_name[step["name"]] = Row(step["name"], step["status"], "step")
            rows.append(row)
        row.failing = row.failing or failing
        if step["status"] == "failed" or row.status != "failed":
            row.status = step["status"]
        calls[step["name"]] = calls.get(step["name"], 0) + 1
        row.bars.extend(_step_bars(t0, span, step, start, end, windows))
        if step["attempts"] > 1:
            row.label = f"{step['name']} \u00d7{step['attempts']}"
    for name, count in calls.items():
        if count > 1:
            by_name[name].label = f"{name} ({count} calls)"
    ticks = [(100.0 * i / 4, "+" + duration(span * i / 4)) for i in range(5)]
    ticks[0] = (0.0, "0")
    return Timeline(span, rows, ticks)
