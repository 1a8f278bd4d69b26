"""Durable waits inside a flow: sleeping and waiting for child runs without holding a slot.

Both give the worker slot back (the run becomes ``sleeping``) and let any worker resume the
run later, also after every worker restarted. A resumed run executes its flow function again
from the top: finished steps return their recorded results and children submitted before are
found again by their deterministic idempotency keys, so the code reaches the wait again —
which now returns. Call them without ``await``, in sync and ``async`` flows alike.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import serialization
from .context import current_run
from .errors import RunCancelled, RunFailed, Suspend
from .store.records import TERMINAL
from .timeutil import to_ms

if TYPE_CHECKING:
    from .app import RunHandle


def sleep(duration: float | timedelta) -> None:
    """Sleep durably inside a flow (outside a run: a plain ``time.sleep``)."""
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    ctx = current_run.get()
    if ctx is None:
        time.sleep(max(0.0, seconds))
        return
    ctx.sleep_until(ctx.now_ms() + int(seconds * 1000))


def sleep_until(moment: datetime) -> None:
    """Sleep durably until ``moment`` (naive datetimes are UTC)."""
    ctx = current_run.get()
    if ctx is None:
        time.sleep(max(0.0, (to_ms(moment) - int(time.time() * 1000)) / 1000))
        return
    ctx.sleep_until(to_ms(moment))


def gather(
    *handles: RunHandle, poll_seconds: float = 1.0, return_exceptions: bool = False
) -> list[Any]:
    """Wait for child runs and return their results in order.

    Inside a flow the wait is durable: while children are unfinished the parent is suspended
    and re-checks every ``poll_seconds``. A failed or cancelled child raises
    :class:`RunFailed` / :class:`RunCancelled` (or is returned in place with
    ``return_exceptions=True``).
    """
    ctx = current_run.get()
    if not handles:
        return []
    store = handles[0].app.store
    if ctx is None:
        for handle in handles:
            handle.wait()
    else:
        ctx.check_boundary()
        statuses = ctx.durably(
            "reading the status of child runs",
            lambda: [store.get_run_status(h.id) for h in handles],
        )
        if any(status not in TERMINAL for status in statuses):
            raise Suspend(ctx.now_ms() + int(poll_seconds * 1000), "gather")
    rows = (
        [store.get_run(h.id) for h in handles]
        if ctx is None
        else ctx.durably("reading child runs", lambda: [store.get_run(h.id) for h in handles])
    )
    results: list[Any] = []
    for handle, row in zip(handles, rows, strict=True):
        assert row is not None
        outcome: Any
        if row["status"] == "succeeded":
            outcome = serialization.loads(row["result"])
        elif row["status"] == "cancelled":
            outcome = RunCancelled(handle.id)
        else:
            outcome = RunFailed(handle.id, row["error"], row["traceback"])
        if isinstance(outcome, Exception) and not return_exceptions:
            raise outcome
        results.append(outcome)
    return results
