"""The schedule calendar: upcoming fire times laid out by day, week or month.

Days are cut in the browser's time zone (sent by the dashboard's script in a cookie); the
fire times themselves come from :meth:`legato.client.Client.upcoming`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..client import Client
from ..timeutil import parse_iso

VIEWS = ("day", "week", "month")
#: Most fire times computed for one page (an every-10-seconds schedule fires 267,840 times
#: in a month): past it the calendar says it shows the first ones only.
MAX_FIRES = 5000
#: A flow firing more often than this in one day is shown as one line with a count.
LIST_LIMIT = 4


def zone(name: str | None) -> ZoneInfo:
    """The browser's time zone by IANA name, UTC when unknown."""
    if name and len(name) < 64 and all(c.isalnum() or c in "/_+-" for c in name):
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


@dataclass
class Group:
    """One flow's fires on one day (or one hour, in the day view)."""

    flow: str
    schedule: str
    fires: list[str] = field(default_factory=list)

    @property
    def many(self) -> bool:
        return len(self.fires) > LIST_LIMIT


@dataclass
class Cell:
    day: date
    label: str
    in_range: bool
    past: bool
    today: bool
    groups: list[Group] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(g.fires) for g in self.groups)


@dataclass
class Calendar:
    view: str
    anchor: date
    tz: str
    title: str
    start: datetime
    end: datetime
    cells: list[Cell]
    previous: date
    next: date
    truncated: bool
    total: int
    flows: list[str]

    @property
    def weeks(self) -> list[list[Cell]]:
        return [self.cells[i : i + 7] for i in range(0, len(self.cells), 7)]


def _range(view: str, anchor: date) -> tuple[date, date, date, date, str]:
    """``(first day shown, day after the last, previous anchor, next anchor, title)``."""
    if view == "day":
        return (
            anchor,
            anchor + timedelta(days=1),
            anchor - timedelta(days=1),
            anchor + timedelta(days=1),
            anchor.strftime("%A %d %B %Y"),
        )
    if view == "week":
        monday = anchor - timedelta(days=anchor.weekday())
        sunday = monday + timedelta(days=6)
        return (
            monday,
            monday + timedelta(days=7),
            monday - timedelta(days=7),
            monday + timedelta(days=7),
            f"{monday:%d %b} \u2013 {sunday:%d %b %Y}",
        )
    first = anchor.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    previous = (first - timedelta(days=1)).replace(day=1)
    grid_start = first - timedelta(days=first.weekday())
    last = following - timedelta(days=1)
    grid_end = last + timedelta(days=7 - last.weekday())
    return grid_start, grid_end, previous, following, first.strftime("%B %Y")


def build(
    client: Client, view: str, anchor: date, tz: ZoneInfo, flow: str | None = None
) -> Calendar:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r} (one of: {', '.join(VIEWS)})")
    first, after, previous, following, title = _range(view, anchor)
    start = datetime.combine(first, datetime.min.time(), tz)
    end = datetime.combine(after, datetime.min.time(), tz)
    now = datetime.fromtimestamp(client.store.now_ms() / 1000, UTC)
    today = now.astimezone(tz).date()
    fires: list[dict[str, Any]] = []
    if end > now:
        fires = client.upcoming(int(end.timestamp() * 1000), flow=flow, limit=MAX_FIRES)
    month = anchor.month if view == "month" else None
    cells: dict[date, Cell] = {}
    day = first
    while day < after:
        cells[day] = Cell(
            day=day,
            label=day.strftime("%a %d") if view != "month" else str(day.day),
            in_range=month is None or day.month == month,
            past=day < today,
            today=day == today,
        )
        day += timedelta(days=1)
    hours: dict[int, list[Group]] = {}
    for fire in fires:
        at = parse_iso(fire["fire_at"]).astimezone(tz)
        if at < start:
            continue
        if view == "day":
            slot = hours.setdefault(at.hour, [])
        else:
            cell = cells.get(at.date())
            if cell is None:
                continue
            slot = cell.groups
        group = next(
            (g for g in slot if g.flow == fire["flow"] and g.schedule == fire["schedule"]), None
        )
        if group is None:
            group = Group(fire["flow"], fire["schedule"])
            slot.append(group)
        group.fires.append(fire["fire_at"])
    ordered = [cells[d] for d in sorted(cells)]
    if view == "day":
        ordered = [
            Cell(
                day=first,
                label=f"{hour:02d}:00",
                in_range=True,
                past=first < today or (first == today and hour < now.astimezone(tz).hour),
                today=False,
                groups=hours.get(hour, []),
            )
            for hour in range(24)
        ]
    return Calendar(
        view=view,
        anchor=anchor,
        tz=tz.key,
        title=title,
        start=start,
        end=end,
        cells=ordered,
        previous=previous,
        next=following,
        truncated=len(fires) >= MAX_FIRES,
        total=len(fires),
        flows=sorted({f["flow"] for f in fires}),
    )
