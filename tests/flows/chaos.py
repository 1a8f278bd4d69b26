"""Flows of the chaos suite: their side effects let a test check what ran, how often, where.

Every step execution appends ``start <step> <nonce>`` and ``end <step> <nonce>`` to a file
named after its run (``O_APPEND``: atomic across processes) and returns its nonce, which the
database records as the step's result. A completed step — one whose result was recorded —
must never start again: no ``start`` line of that step may follow the ``end`` line of the
recorded nonce (see :func:`tests.chaos.checks.steps_never_rerun`).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import legato
from legato import App, RetryPolicy

app = App()


def _marker_file(directory: str) -> Path:
    ctx = legato.in_run()
    assert ctx is not None, "chaos flows run under a worker"
    return Path(directory) / ctx.run_id


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")


@app.step
def tick(directory: str, index: int, pause: float) -> str:
    """One step execution: its marker lines around an optional pause."""
    path = _marker_file(directory)
    nonce = f"{os.getpid()}-{time.monotonic_ns()}"
    _append(path, f"start {index} {nonce}")
    if pause:
        time.sleep(pause)
    _append(path, f"end {index} {nonce}")
    return nonce


@app.flow(retries=RetryPolicy(attempts=1))
def chain(directory: str, steps: int = 3, pause: float = 0.01) -> list[str]:
    """``steps`` checkpointed steps; returns the recorded nonce of each."""
    return [tick(directory, i, pause) for i in range(steps)]


@app.flow(retries=RetryPolicy(attempts=3, backoff="fixed", delay=0.05))
def slow_chain(directory: str, steps: int = 20, pause: float = 0.05) -> list[str]:
    """Many short steps: a cancel request is honoured at the next one."""
    return [tick(directory, i, pause) for i in range(steps)]


@app.flow(max_recoveries=2)
def poison(directory: str) -> None:
    """Kills the process that runs it, every time."""
    _append(Path(directory) / "poison-starts", str(os.getpid()))
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)


@app.flow(max_recoveries=2)
def ordinary(directory: str, pause: float = 0.2) -> str:
    """A well-behaved run beside the poison one (as quick to be declared poison, were it
    blamed for the crashes it merely saw)."""
    return tick(directory, 0, pause)
