"""Service-layer actions on queues and limits, shared by the CLI, the REST API and dashboard."""

from __future__ import annotations

import enum
from collections import Counter
from typing import Any

from .limits import RateLimit, check_limit_name
from .serializers import empty_queue_json
from .store import Store
from .store.gate import parse_limit_keys
from .timeutil import to_iso


class Unset(enum.Enum):
    UNSET = "unset"


UNSET = Unset.UNSET


def queue_json(name: str, row: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": name,
        "paused": bool(row["paused"]) if row else False,
        "strict": bool(row["strict"]) if row else False,
        "concurrency": row["concurrency"] if row else None,
    }


def with_queue_settings(
    queues: list[dict[str, Any]], settings: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Add ``paused``, ``strict`` and ``concurrency`` to ``queues list`` entries (and list
    configured queues that have no runs yet)."""
    by_name = {r["name"]: r for r in settings}
    out = {q["name"]: q for q in queues}
    for name in by_name:
        out.setdefault(name, empty_queue_json(name))
    for name, item in out.items():
        item.update({k: v for k, v in queue_json(name, by_name.get(name)).items() if k != "name"})
    return [out[name] for name in sorted(out)]


def set_queue(
    store: Store,
    name: str,
    *,
    paused: bool | None = None,
    strict: bool | None = None,
    concurrency: int | Unset | None = UNSET,
) -> dict[str, Any]:
    name = name.strip()
    if not name:
        raise ValueError("a queue needs a name")
    if isinstance(concurrency, int) and concurrency < 1:
        raise ValueError("a queue's concurrency must be at least 1")
    current = next((r for r in store.queue_settings() if r["name"] == name), None)
    state = queue_json(name, current)
    if paused is not None:
        state["paused"] = paused
    if strict is not None:
        state["strict"] = strict
    if not isinstance(concurrency, Unset):
        state["concurrency"] = concurrency
    store.set_queue(
        name,
        paused=state["paused"],
        strict=state["strict"],
        concurrency=state["concurrency"],
    )
    return state


def limits(store: Store) -> list[dict[str, Any]]:
    """``[{"name", "kind", "concurrency", "rate", "period_seconds", "held": {key: n}, ...}]``."""
    held: dict[str, Counter[str]] = {}
    for row in store.running_with_limits():
        for name, key in parse_limit_keys(row["limit_keys"]):
            held.setdefault(name, Counter())[key] += 1
    started: dict[str, Counter[str]] = {}
    for row in store.rate_counts():
        started.setdefault(row["name"], Counter())[row["key"]] = int(row["n"])
    out = []
    for row in store.list_limits():
        if row["concurrency"] is None and row["rate"] is None and row["kind"] == "flow":
            continue  # a flow limit the code no longer declares
        in_use = held.get(row["name"], Counter())
        out.append(
            {
                "name": row["name"],
                "kind": row["kind"],
                "concurrency": row["concurrency"],
                "rate": row["rate"],
                "period_seconds": row["period_ms"] / 1000 if row["period_ms"] else None,
                "running": sum(in_use.values()),
                "running_by_key": dict(in_use),
                "recent_starts": sum(started.get(row["name"], Counter()).values()),
                "updated_at": to_iso(row["updated_at"]),
            }
        )
    return out


def set_limit(store: Store, name: str, concurrency: int | None, rate: str | None) -> dict[str, Any]:
    check_limit_name(name)
    if concurrency is None and rate is None:
        raise ValueError("give the limit a size (N running at once) and/or a --rate N/PERIOD")
    if concurrency is not None and concurrency < 0:
        raise ValueError("a limit's size must be 0 or more")
    parsed = RateLimit.coerce(rate) if rate is not None else None
    store.set_limit(
        name,
        concurrency=concurrency,
        rate=parsed.count if parsed else None,
        period_ms=parsed.period_ms if parsed else None,
    )
    return next(item for item in limits(store) if item["name"] == name)


def delete_limit(store: Store, name: str) -> None:
    if name.startswith("flow:"):
        raise ValueError("a flow's own limits are set in its code (@app.flow)")
    if not store.delete_limit(name):
        raise ValueError(f"no limit named {name!r}")
