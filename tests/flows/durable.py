"""Flows for the durable sleep and subflow tests. Side effects are appended to files under the
directory given as a parameter, so tests can count how often each piece ran."""

from __future__ import annotations

import time
from pathlib import Path

import legato
from legato import App

app = App()


def mark(directory: str, name: str) -> None:
    with open(Path(directory) / name, "a") as f:
        f.write("x\n")


@app.step
def note(directory: str, name: str) -> None:
    mark(directory, name)


@app.flow
def napper(directory: str, seconds: float) -> str:
    note(directory, "before")
    legato.sleep(seconds)
    note(directory, "after")
    return "rested"


@app.flow
def child(directory: str, i: int) -> int:
    mark(directory, f"child-{i}-started")
    while not (Path(directory) / "release").exists():
        time.sleep(0.05)
    return i * 10


@app.flow
def parent(directory: str, n: int) -> list[int]:
    mark(directory, "parent-body")
    handles = [child.submit(directory, i) for i in range(n)]
    return legato.gather(*handles, poll_seconds=0.2)


@app.flow(on_event="order.created")
def on_order(order_id: int, total: float = 0) -> int:
    return order_id


@app.flow(on_event="order.created", event_filter={"country": "FR"})
def on_french_order(order_id: int, country: str) -> str:
    return country


@app.flow(on_event="order.shipped")
def on_shipping(order_id: int) -> int:
    return order_id
