"""What the chaos tests check after the faults, from the database and from the flows' markers.

- every acknowledged run ends exactly once (one terminal status change in its events), in the
  state its code decides;
- a completed step never starts again (:func:`steps_rerun`);
- nothing stays ``running``;
- no run failed because of an infrastructure error.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from legato.errors import DatabaseUnavailable
from legato.store import TERMINAL, Store

T = TypeVar("T")

INFRASTRUCTURE_WORDS = (
    "AdminShutdown",
    "OperationalError",
    "DatabaseUnavailable",
    "server closed the connection",
    "terminating connection",
    "database is locked",
    "PoolTimeout",
)


def through_faults(read: Callable[[], T], timeout: float = 60) -> T:
    """``read()``, retried while the database is unavailable (the test's own reads)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except DatabaseUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_all_finished(store: Store, run_ids: Iterable[str], timeout: float) -> float:
    """Wait until every run is terminal; returns the seconds it took."""
    pending = set(run_ids)
    began = time.monotonic()
    while pending:
        for run_id in list(pending):
            status = through_faults(lambda r=run_id: store.get_run_status(r))  # type: ignore[misc]
            if status in TERMINAL:
                pending.discard(run_id)
        if not pending:
            break
        if time.monotonic() - began > timeout:
            sample = sorted(pending)[:5]
            states = {r: store.get_run_status(r) for r in sample}
            raise AssertionError(f"{len(pending)} runs not finished after {timeout}s: {states}")
        time.sleep(0.2)
    return time.monotonic() - began


def terminal_changes(store: Store, run_id: str) -> list[str]:
    return [e["status"] for e in store.get_events(run_id) if e["status"] in TERMINAL]


def outcomes(store: Store, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    rows = {}
    for run_id in run_ids:
        row = store.get_run(run_id)
        assert row is not None, f"acknowledged run {run_id} is missing"
        rows[run_id] = row
    return rows


def assert_ended_once(store: Store, rows: dict[str, dict[str, Any]]) -> None:
    """Each run changed to a terminal status exactly once."""
    twice = {r: terminal_changes(store, r) for r in rows}
    bad = {r: c for r, c in twice.items() if len(c) != 1}
    assert not bad, f"{len(bad)} runs did not end exactly once: {dict(list(bad.items())[:5])}"


def assert_no_infrastructure_failure(rows: dict[str, dict[str, Any]]) -> None:
    blamed = {
        r: row["error"]
        for r, row in rows.items()
        if row["error"] and any(word in row["error"] for word in INFRASTRUCTURE_WORDS)
    }
    assert not blamed, f"runs failed with an infrastructure error: {dict(list(blamed.items())[:5])}"


def steps_rerun(store: Store, directory: Path, run_ids: Iterable[str]) -> list[str]:
    """Steps that started again after an execution whose result the database recorded."""
    problems = []
    for run_id in run_ids:
        marker = directory / run_id
        lines = marker.read_text().splitlines() if marker.exists() else []
        for step in store.get_steps(run_id):
            if step.status != "succeeded" or step.result is None:
                continue
            nonce = step.result.strip('"')
            index = step.position
            end = f"end {index} {nonce}"
            if end not in lines:
                problems.append(f"{run_id} step {index}: recorded nonce {nonce} never ended")
                continue
            after = lines[lines.index(end) + 1 :]
            if any(line.startswith(f"start {index} ") for line in after):
                problems.append(f"{run_id} step {index} started again after it completed")
    return problems


def executions(directory: Path, run_ids: Iterable[str]) -> Counter[str]:
    """How many times each step of each run started (``run:index``)."""
    counts: Counter[str] = Counter()
    for run_id in run_ids:
        marker = directory / run_id
        for line in marker.read_text().splitlines() if marker.exists() else []:
            if line.startswith("start "):
                counts[f"{run_id}:{line.split()[1]}"] += 1
    return counts


#: Figures of every chaos test of the session, printed in pytest's summary (conftest.py).
FIGURES: list[str] = []


def report(title: str, figures: dict[str, Any]) -> None:
    """Record what was survived; the summary at the end of the session prints it."""
    FIGURES.append(f"{title}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
