"""Flows driven by the acceptance tests through the real CLI and real worker processes.

Side effects are appended, one line each, to files in a directory given as a parameter, so
tests can count how often a piece of code ran and see which worker process (pid) ran it.
Steps that must stay "in flight" for a while write a marker and then wait for a ``release``
file that the test creates: tests synchronise on files, never on sleeps.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import legato
from legato import App, RetryPolicy

app = App()

WAIT_LIMIT_SECONDS = 120.0


def append(directory: str, name: str, text: str = "x") -> None:
    """Append one line to ``directory/name`` (``O_APPEND``: atomic across processes)."""
    with open(Path(directory) / name, "a") as f:
        f.write(text + "\n")


def wait_for_release(directory: str, name: str = "release") -> None:
    """Block until the test creates ``directory/name``."""
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while not (Path(directory) / name).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never appeared in {directory}")
        time.sleep(0.02)


# -- 1. two steps -------------------------------------------------------------------------------


@app.step
def double(x: int) -> int:
    return 2 * x


@app.step
def label_value(label: str, value: int) -> str:
    return f"{label}={value}"


@app.flow(description="Double a number, then label it")
def two_steps(x: int, label: str = "n") -> dict[str, Any]:
    doubled = double(x)
    return {"value": doubled, "text": label_value(label, doubled)}


# -- 2. failures and retries --------------------------------------------------------------------


@app.step
def prepare(directory: str) -> int:
    append(directory, "prepare")
    return 17


@app.step(retries=RetryPolicy(attempts=2, backoff="fixed", delay=0.01))
def explode(directory: str, row: int) -> None:
    append(directory, "explode")
    raise ValueError(f"bad row {row}")


@app.flow(retries=RetryPolicy(attempts=3, backoff="fixed", delay=0.05))
def doomed(directory: str) -> None:
    explode(directory, prepare(directory))


# -- 3. logs ------------------------------------------------------------------------------------


@app.step
def talk(directory: str) -> int:
    logging.info("hello from talk")
    logging.getLogger("acceptance.talk").warning("careful in talk")
    print("printed by talk")
    print("printed to stderr by talk", file=sys.stderr)
    # A thread started here does not inherit the run's context: its records are not the run's
    # and go where they would go without Legato (the worker's stderr).
    background = threading.Thread(
        target=logging.getLogger("acceptance.background").warning, args=("outside any run",)
    )
    background.start()
    background.join()
    append(directory, "talking")
    wait_for_release(directory)
    logging.error("talk was released")
    return 3


@app.flow
def chatty(directory: str) -> int:
    logging.info("flow body starts")
    n = talk(directory)
    print("flow body ends")
    return n


# -- 4, 5, 6. crashes, fencing, shutdown ----------------------------------------------------------


@app.step
def first(directory: str) -> int:
    append(directory, "first", str(os.getpid()))
    return 1


@app.step
def second(directory: str, value: int) -> int:
    append(directory, "second", str(os.getpid()))
    wait_for_release(directory)
    logging.info("second step released in %d", os.getpid())
    return value + 10


@app.step
def third(directory: str, value: int) -> int:
    append(directory, "third", str(os.getpid()))
    return value * 2


@app.flow
def three_steps(directory: str) -> dict[str, int]:
    """Result: ``value`` is (1 + 10) * 2 and ``pid`` the worker that finished the run."""
    value = third(directory, second(directory, first(directory)))
    return {"value": value, "pid": os.getpid()}


@app.flow
def bump(path: str) -> str:
    """Append the run's id to ``path``: one line per execution of the flow body."""
    ctx = legato.in_run()
    assert ctx is not None
    with open(path, "a") as f:
        f.write(ctx.run_id + "\n")
    return ctx.run_id


# -- 9. cancellation ----------------------------------------------------------------------------


@app.step
def wait_for_cancel(directory: str) -> int:
    """Runs until the worker has seen the cancel request (or the test releases it)."""
    ctx = legato.in_run()
    assert ctx is not None
    append(directory, "waiting")
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while not ctx.cancel_requested.is_set() and not (Path(directory) / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no cancel request arrived")
        time.sleep(0.02)
    return 1


@app.step
def after_cancel(directory: str) -> int:
    append(directory, "after")
    return 2


@app.flow
def cancellable(directory: str) -> int:
    return wait_for_cancel(directory) + after_cancel(directory)


# -- 10. timeouts -------------------------------------------------------------------------------


@app.flow(timeout=1)
def spin() -> int:
    """Pure Python that never returns: interrupted by the timeout."""
    n = 0
    while True:
        n += 1


@app.flow(timeout=1)
def nap() -> None:
    """Blocked in C (``time.sleep``): the worker abandons its thread at the deadline."""
    time.sleep(60)
