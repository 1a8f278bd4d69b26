"""Flows for the flow-control tests: limits, queues, priorities, poison runs, isolation.

Flows that must be held open wait for a file named ``release`` in the directory they are
given, so tests decide when they end without sleeping.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import legato
from legato import App

app = App()


def _wait_release(directory: str, name: str = "release", limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not (Path(directory) / name).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _append(directory: str, name: str, line: str) -> None:
    with open(Path(directory) / name, "a") as f:
        f.write(line + "\n")


@app.flow(concurrency=3)
def capped(hold: float = 0.2) -> None:
    time.sleep(hold)


@app.flow(concurrency=1, concurrency_key="customer_id")
def per_customer(customer_id: str, directory: str) -> str:
    _wait_release(directory, f"release-{customer_id}")
    return customer_id


@app.flow(limits=["warehouse-db"])
def warehouse(directory: str) -> None:
    _wait_release(directory)


@app.flow(queue="fifo")
def ordered(i: int, directory: str) -> int:
    _append(directory, "order", str(i))
    return i


@app.flow(queue="prio")
def prioritised(i: int) -> int:
    return i


@app.flow(queue="paused-q")
def pausable() -> str:
    return "done"


@app.flow(rate_limit="2/3s")
def rated(i: int) -> int:
    return i


@app.flow(rate_limit="4/2s", rate_limit_key="tenant")
def rated_per_tenant(tenant: str, i: int) -> int:
    return i


@app.flow
def napper(seconds: float) -> str:
    legato.sleep(seconds)
    return "rested"


@app.flow(max_recoveries=1)
def poison(directory: str) -> None:
    _append(directory, "poison-starts", str(os.getpid()))
    time.sleep(600)  # its worker is killed while it runs


@app.step
def double(x: int) -> int:
    return x * 2


@app.flow(isolation="process")
def isolated(x: int) -> dict[str, int]:
    print(f"child pid {os.getpid()}")
    return {"value": double(x), "pid": os.getpid()}


@app.flow(isolation="process", timeout=1.5)
def isolated_hang() -> None:
    time.sleep(600)


@app.flow(isolation="process")
def isolated_exit() -> None:
    os._exit(1)


@app.flow(isolation="process", memory_limit=300)
def isolated_hog() -> int:
    block = bytearray(1024 * 1024 * 1024)  # 1 GiB: over the 300 MiB limit
    return len(block)
