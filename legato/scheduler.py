"""The scheduler loop: turns due schedule fires into runs, exactly once across workers.

Every worker runs it; there is no leader. A fire creates its run with the idempotency key
``schedule:<schedule id>:<fire ms>``, so however many workers fire the same time, the unique
index keeps one run. Due schedules are fired in batches, one transaction each: on PostgreSQL
the batch's schedule rows are locked with ``SKIP LOCKED``, so concurrent workers split the
work instead of repeating it. Fire times are compared with the database clock (or an
injected ``clock`` in tests).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .app import new_run_id
from .limits import FlowControl, limit_keys_for
from .schedules import Schedule, parse_definition
from .store import NewRun, Store
from .store.base import Tx
from .store.records import WAITING

log = logging.getLogger("legato.scheduler")

BATCH = 500


def schedule_run_key(schedule_id: str, fire_ms: int) -> str:
    return f"schedule:{schedule_id}:{fire_ms}"


def fires_to_run(schedule: Schedule, next_fire_ms: int, now_ms: int) -> list[int]:
    """Apply the catch-up policy to the fires due between ``next_fire_ms`` and ``now_ms``."""
    grace = int(schedule.misfire_grace_s * 1000)
    window = int(schedule.catchup_window_s * 1000)
    start = max(next_fire_ms - 1, now_ms - max(window, grace) - 1)
    due = schedule.fires_between(start, now_ms)
    on_time = [f for f in due if now_ms - f <= grace]
    missed = [f for f in due if now_ms - f > grace]
    if schedule.catchup == "skip" or not missed:
        return on_time
    if schedule.catchup == "once":
        return [missed[-1], *on_time]
    return [f for f in missed if now_ms - f <= window] + on_time


class Scheduler:
    """Fires due schedules. :meth:`tick` does one pass; :meth:`run` loops until stopped."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], int] | None = None,
        interval: float = 1.0,
        controls: Mapping[str, FlowControl] | None = None,
    ) -> None:
        self.store = store
        # The flows' declarations from the code, when this process has it (callable keys).
        self.controls = dict(controls or {})
        self.clock = clock or store.now_ms
        self.interval = interval
        self._stop = threading.Event()

    def tick(self) -> int:
        """Create the runs of every due fire; return how many runs were planned."""
        now = self.clock()
        planned = 0

        def plan(tx: Tx, rows: list[dict[str, Any]]) -> tuple[list[NewRun], list[dict[str, Any]]]:
            nonlocal planned
            runs: list[NewRun] = []
            advances: list[dict[str, Any]] = []
            for row in rows:
                try:
                    schedule = parse_definition(row["definition"])
                except Exception as exc:  # a definition written by another Legato version
                    log.error("schedule %s has an unreadable definition: %s", row["id"], exc)
                    continue
                for fire in fires_to_run(schedule, row["next_fire_at"], now):
                    if self._overlap_allows(schedule, row["id"], tx):
                        runs.append(self._run_for(row, schedule, fire))
                    else:
                        log.info("schedule %s: fire skipped, previous run active", row["id"])
                advances.append(
                    {
                        "id": row["id"],
                        "old": row["next_fire_at"],
                        "next": schedule.next_fire(now),
                        "last": now,
                    }
                )
            planned += len(runs)
            return runs, advances

        while self.store.fire_schedules(now, BATCH, plan) == BATCH:
            pass
        return planned

    def _run_for(self, row: dict[str, Any], schedule: Schedule, fire: int) -> NewRun:
        return NewRun(
            id=new_run_id(),
            flow=row["flow"],
            params=json.dumps(schedule.params),
            queue=row["queue"],
            max_attempts=row["max_attempts"],
            priority=row["priority"],
            trigger="schedule",
            schedule_id=row["id"],
            idempotency_key=schedule_run_key(row["id"], fire),
            at_ms=fire + schedule.jitter_ms(row["id"], fire),
            limit_keys=limit_keys_for(
                row.get("flow_control"), schedule.params, self.controls.get(row["flow"])
            ),
        )

    def _overlap_allows(self, schedule: Schedule, schedule_id: str, tx: Tx) -> bool:
        if schedule.overlap == "allow":
            return True
        active = self.store.schedule_active_runs(schedule_id, tx)
        if schedule.overlap == "skip":
            return not active
        return not any(status in WAITING for status in active)  # "queue": one may wait

    def sleep_seconds(self) -> float:
        """How long to wait before the next tick: until the next due fire, at most ``interval``."""
        next_due = self.store.next_schedule_due()
        if next_due is None:
            return self.interval
        return min(self.interval, max(0.005, (next_due - self.clock()) / 1000))

    def run(self) -> None:
        """Tick until stopped. A database fault is logged once, then ticks go on at the usual
        interval until one works again (fires missed meanwhile follow the catch-up policy)."""
        failures = 0
        while not self._stop.is_set():
            wait = self.interval
            try:
                self.tick()
                wait = self.sleep_seconds()
            except Exception as exc:
                if failures == 0:
                    log.error("scheduler tick failed, retrying until the database is back: %s", exc)
                failures += 1
            else:
                if failures:
                    log.info("scheduler works again after %d failed tick(s)", failures)
                failures = 0
            self._stop.wait(wait)

    def stop(self) -> None:
        self._stop.set()
