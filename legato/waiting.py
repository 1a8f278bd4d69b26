"""Why is my run waiting? The explanation shown by ``legato runs show``, the API and dashboard.

:func:`explain` looks at a run that is not running and at what could hold it back — its due
time, its queue's settings, the limits it is subject to, the live workers — and answers
with the main reason first::

    {"reason": "limit", "message": "blocked by limit 'warehouse-db': 5/5 held by runs …",
     "limit": "warehouse-db", "key": "", "held": 5, "size": 5, "holders": ["…", …],
     "reasons": [ …every reason that applies, the main one first… ]}

Reasons (``reason`` codes): ``not_due`` (scheduled or retrying later), ``sleeping``,
``queue_paused``, ``limit`` (a concurrency limit is full), ``rate_limited``, ``queue_limit``
(a strict or concurrency-limited queue is full), ``queue_order`` (earlier runs of a strict
queue go first), ``no_worker`` (no live worker serves the queue) and ``queued`` (nothing
holds it back: it starts when a worker slot frees).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .config import Settings
from .store import Store
from .store.gate import parse_limit_keys
from .store.records import WAITING
from .timeutil import to_iso

MAX_HOLDERS = 10


def limit_label(name: str, key: str) -> str:
    """``limit 'warehouse-db'``, ``the concurrency limit of flow 'x'``, ``… for key 'k'``."""
    if name.startswith("flow:"):
        flow, _, kind = name[len("flow:") :].partition(":")
        if kind == "concurrency":
            return f"the per-key concurrency limit of flow {flow!r} for key {key!r}"
        if kind == "rate":
            return f"the per-key rate limit of flow {flow!r} for key {key!r}"
        return f"the limit of flow {flow!r}"
    return f"limit {name!r}"


def explain(store: Store, run: dict[str, Any], settings: Settings) -> dict[str, Any] | None:
    """The reasons a waiting run has not started, main one first (``None`` if not waiting)."""
    if run["status"] not in WAITING:
        return None
    now = store.now_ms()
    reasons: list[dict[str, Any]] = []
    if run["scheduled_for"] > now:
        until = to_iso(run["scheduled_for"])
        if run["status"] == "sleeping":
            reasons.append(
                {"reason": "sleeping", "until": until, "message": f"sleeping until {until}"}
            )
        else:
            what = "retry" if run["status"] == "retrying" else "start"
            reasons.append(
                {"reason": "not_due", "until": until, "message": f"not due until {until} ({what})"}
            )
    queue = run["queue"]
    settings_row = next((r for r in store.queue_settings() if r["name"] == queue), None)
    if settings_row is not None and settings_row["paused"]:
        reasons.append(
            {
                "reason": "queue_paused",
                "queue": queue,
                "message": f"queue {queue!r} is paused (legato queues resume {queue})",
            }
        )
    reasons.extend(_limit_reasons(store, run, now))
    if settings_row is not None:
        reasons.extend(_queue_reasons(store, run, settings_row))
    dead_ms = int(settings.worker_dead_after_seconds * 1000)
    serving = [w for w in store.list_workers(dead_ms) if w["alive"] and queue in w["queues"]]
    if not serving:
        reasons.append(
            {
                "reason": "no_worker",
                "queue": queue,
                "message": f"waiting for a worker on queue {queue!r} (none alive)",
            }
        )
    if not reasons:
        slots = sum(w["concurrency"] for w in serving)
        reasons.append(
            {
                "reason": "queued",
                "queue": queue,
                "message": (
                    f"waiting for a free slot on queue {queue!r} "
                    f"({len(serving)} worker(s), {slots} slot(s))"
                ),
            }
        )
    return {**reasons[0], "reasons": reasons}


def _limit_reasons(store: Store, run: dict[str, Any], now: int) -> list[dict[str, Any]]:
    keys = parse_limit_keys(run.get("limit_keys"))
    if not keys:
        return []
    sizes = {r["name"]: r for r in store.list_limits()}
    holders: dict[tuple[str, str], list[str]] = {}
    for row in store.running_with_limits():
        for lk in parse_limit_keys(row["limit_keys"]):
            holders.setdefault(lk, []).append(row["id"])
    started: Counter[tuple[str, str]] = Counter()
    first: dict[tuple[str, str], int] = {}
    if any(sizes.get(name, {}).get("rate") is not None for name, _ in keys):
        for row in store.rate_counts():
            started[(row["name"], row["key"])] = int(row["n"])
            first[(row["name"], row["key"])] = int(row["first"])
    out: list[dict[str, Any]] = []
    for name, key in keys:
        size = sizes.get(name)
        if size is None:
            continue
        label = limit_label(name, key)
        held = holders.get((name, key), [])
        if size["concurrency"] is not None and len(held) >= size["concurrency"]:
            shown = ", ".join(held[:MAX_HOLDERS]) + (" …" if len(held) > MAX_HOLDERS else "")
            out.append(
                {
                    "reason": "limit",
                    "limit": name,
                    "key": key,
                    "held": len(held),
                    "size": size["concurrency"],
                    "holders": held[:MAX_HOLDERS],
                    "message": (
                        f"blocked by {label}: {len(held)}/{size['concurrency']} held by "
                        f"run(s) {shown}"
                    ),
                }
            )
        if size["rate"] is not None and started[(name, key)] >= size["rate"]:
            until = to_iso(first[(name, key)] + size["period_ms"])
            out.append(
                {
                    "reason": "rate_limited",
                    "limit": name,
                    "key": key,
                    "until": until,
                    "message": (
                        f"rate limited by {label} ({size['rate']} starts per "
                        f"{size['period_ms'] / 1000:g}s) until {until}"
                    ),
                }
            )
    return out


def _queue_reasons(store: Store, run: dict[str, Any], row: dict[str, Any]) -> list[dict[str, Any]]:
    queue = run["queue"]
    cap = 1 if row["strict"] else row["concurrency"]
    if cap is None:
        return []
    out: list[dict[str, Any]] = []
    running = store.running_in_queue(queue)
    kind = "strict queue" if row["strict"] else "queue"
    if len(running) >= cap:
        shown = ", ".join(running[:MAX_HOLDERS])
        out.append(
            {
                "reason": "queue_limit",
                "queue": queue,
                "held": len(running),
                "size": cap,
                "holders": running[:MAX_HOLDERS],
                "message": f"{kind} {queue!r} is full: {len(running)}/{cap} held by run(s) {shown}",
            }
        )
    if row["strict"]:
        ahead = store.runs_ahead(run["id"], queue)
        if ahead:
            out.append(
                {
                    "reason": "queue_order",
                    "queue": queue,
                    "ahead": ahead,
                    "message": f"{ahead} earlier run(s) of strict queue {queue!r} start first",
                }
            )
    return out
