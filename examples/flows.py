"""Example flows that show what Legato does.

Start a worker, then submit runs from another terminal::

    legato worker examples/flows.py
    legato submit etl --param day=2026-11-24 --wait

The database is ``--db URL``, else ``$LEGATO_DATABASE_URL``, else ``sqlite:///legato.db``.

=================  ==========================================================================
flow               shows
=================  ==========================================================================
``etl``            three steps with parameters; a dataclass result
``flaky``          a step retried in place (``ConnectionError``), then a flow retry with
                   exponential backoff that replays the step that already succeeded
``broken``         a step that always fails: error, failed step, traceback, attempts
``chatty``         ``logging`` and ``print`` captured per run and per step
``crawl``          an ``async`` flow with ``async`` steps run concurrently
``crunch``         a slow flow (about 20 s) with progress logs: watch it, follow it, cancel it
``export``         a flow timeout (3 s): it succeeds with ``seconds=1`` and times out by default
``backfill``       a parent flow that starts ``etl`` subflows and waits for them durably
``month_end``      a cron schedule on the last day of every month (Europe/Paris)
``sync_inventory`` an interval schedule: every minute, so the dashboard fills in live
``daily_report``   a cron schedule on weekdays at 06:00 (Europe/Paris)
=================  ==========================================================================

``make demo`` (or ``legato up examples/flows.py``) runs them all with the dashboard at
http://127.0.0.1:8000/.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from dataclasses import dataclass

import legato
from legato import App, RetryPolicy, cron, every

app = App()
log = logging.getLogger(__name__)


# -- etl: a three-step pipeline ----------------------------------------------------------------


@dataclass
class LoadReport:
    day: str
    table: str
    rows: int
    revenue: float


@app.step
def extract(day: str, source: str) -> list[dict]:
    """Pretend to read one day of rows from a source system."""
    rng = random.Random(f"{source}/{day}")  # the same day always gives the same rows
    rows = [
        {
            "order_id": i,
            "amount": round(rng.uniform(5, 500), 2),
            "country": rng.choice(["FR", "DE", "US"]),
        }
        for i in range(1, rng.randint(20, 40))
    ]
    log.info("extracted %d rows from %s for %s", len(rows), source, day)
    return rows


@app.step
def transform(rows: list[dict], currency: str) -> list[dict]:
    rate = {"EUR": 1.0, "USD": 1.08, "GBP": 0.86}[currency]
    out = [{**r, "amount": round(r["amount"] * rate, 2), "currency": currency} for r in rows]
    log.info("converted %d rows to %s", len(out), currency)
    return out


@app.step
def load(rows: list[dict], day: str, table: str) -> LoadReport:
    time.sleep(0.2)  # the "database write"
    report = LoadReport(day, table, len(rows), round(sum(r["amount"] for r in rows), 2))
    log.info("loaded %d rows into %s", report.rows, table)
    return report


@app.flow(description="Extract, transform and load one day of orders", retries=2)
def etl(
    day: str, source: str = "shop", currency: str = "EUR", table: str = "daily_orders"
) -> LoadReport:
    rows = extract(day, source)
    rows = transform(rows, currency)
    return load(rows, day, table)


# -- flaky: retries at two levels --------------------------------------------------------------

_calls: dict[str, int] = {}  # calls of fetch_rates per run, in this worker process


@app.step(
    retries=RetryPolicy(
        attempts=5,
        backoff="exponential",
        delay=0.5,
        max_delay=5,
        jitter=0.2,
        retry_on=(ConnectionError,),
    )
)
def fetch_rates(base: str, failures: int) -> dict[str, float]:
    """A flaky upstream API: the first ``failures`` calls of each run fail, randomly slow."""
    ctx = legato.in_run()
    key = ctx.run_id if ctx else "local"
    _calls[key] = _calls.get(key, 0) + 1
    log.info("GET https://rates.example.com/%s (call %d)", base, _calls[key])
    time.sleep(random.uniform(0.05, 0.3))
    if _calls[key] <= failures:
        raise ConnectionError(f"rates.example.com reset the connection (call {_calls[key]})")
    return {"EUR": 1.0, "USD": 1.08, "GBP": 0.86} if base == "EUR" else {base: 1.0}


@app.step
def publish(rates: dict[str, float]) -> int:
    ctx = legato.in_run()
    if ctx is not None and ctx.attempt == 1:
        # Fails the whole first attempt of the run; the flow's policy retries it.
        log.info("publishing %d rates", len(rates))
        raise TimeoutError("the cache cluster did not answer within 2s")
    log.info("published %d rates on attempt %d", len(rates), ctx.attempt if ctx else 0)
    return len(rates)


@app.flow(
    description="Fetch exchange rates from a flaky API and publish them",
    retries=RetryPolicy(
        attempts=3, backoff="exponential", delay=2, factor=2, max_delay=30, jitter=0.1
    ),
)
def flaky(base: str = "EUR", failures: int = 2) -> int:
    rates = fetch_rates(base, failures)  # on attempt 2 this returns the recorded result
    return publish(rates)


# -- broken: a step that always fails ----------------------------------------------------------


def parse_amount(raw: str, line: int) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"bad row {line}: amount {raw!r} is not a number") from None


@app.step
def validate_invoices(lines: list[str]) -> float:
    total = 0.0
    for number, line in enumerate(lines, start=1):
        total += parse_amount(line.split(";")[1], number)
    return total


@app.step
def download_invoices(batch: str) -> list[str]:
    return [f"INV-{i};{i * 10}.50" for i in range(1, 17)] + ["INV-17;abc"]


@app.flow(
    description="Always fails in validate_invoices",
    retries=RetryPolicy(attempts=2, backoff="fixed", delay=1),
)
def broken(batch: str = "2026-11") -> float:
    lines = download_invoices(batch)
    return validate_invoices(lines)


# -- chatty: captured logs and prints ----------------------------------------------------------


@app.step
def greet(name: str) -> str:
    print(f"hello, {name}")  # stdout -> INFO
    print("this line goes to stderr", file=sys.stderr)  # stderr -> WARNING
    log.warning("a warning from step greet")
    return f"hello, {name}"


@app.flow(description="Logging and print output, captured per run and step")
def chatty(name: str = "world", lines: int = 3) -> str:
    log.info("starting: %d lines for %s", lines, name)  # no step: attributed to the flow
    for i in range(1, lines + 1):
        print(f"line {i} of {lines}")
    print("a message\nwritten over\nthree lines")
    message = greet(name)
    try:
        {}["missing"]
    except KeyError:
        log.exception("an error logged with its traceback (the run continues)")
    log.info("done")
    return message


# -- crawl: async flow and async steps ---------------------------------------------------------


@app.step
async def fetch_page(url: str) -> dict:
    delay = random.uniform(0.2, 1.0)
    await asyncio.sleep(delay)  # stands for an HTTP request
    log.info("fetched %s in %.2fs", url, delay)
    return {"url": url, "bytes": len(url) * 1000}


@app.step
async def summarize(pages: list[dict]) -> dict:
    return {"pages": len(pages), "bytes": sum(p["bytes"] for p in pages)}


@app.flow(description="Async flow: fetch pages concurrently, then summarize", timeout=30)
async def crawl(urls: list[str] | None = None) -> dict:
    urls = urls or [f"https://example.com/page/{i}" for i in range(1, 6)]
    pages = await asyncio.gather(*(fetch_page(u) for u in urls))  # steps run concurrently
    return await summarize(list(pages))


# -- crunch: a slow flow to watch --------------------------------------------------------------


@app.step
def process_chunk(chunk: int, chunks: int, seconds: float) -> int:
    for tick in range(1, 5):
        time.sleep(seconds / 4)
        log.info("chunk %d/%d: %d%%", chunk, chunks, tick * 25)
    return chunk * 100


@app.flow(description="A slow flow (chunks x seconds) with progress logs")
def crunch(chunks: int = 10, seconds: float = 2.0) -> int:
    total = 0
    for chunk in range(1, chunks + 1):
        total += process_chunk(chunk, chunks, seconds)  # cancellation takes effect between chunks
    return total


# -- export: a flow timeout --------------------------------------------------------------------


@app.step
def write_export(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # short sleeps: the timeout interrupts within 0.1 s
        time.sleep(0.1)
    return f"export of {seconds:g}s written"


@app.flow(description="Times out after 3 s (succeeds with seconds=1)", timeout=3)
def export(seconds: float = 10) -> str:
    return write_export(seconds)


# -- backfill: subflows ------------------------------------------------------------------------


@app.flow(description="Run etl for several days as subflows and wait for them")
def backfill(days: list[str]) -> dict[str, int]:
    handles = [etl.submit(day=day) for day in days]  # idempotent: not duplicated on recovery
    reports = legato.gather(*handles, poll_seconds=0.5)  # the slot is free while waiting
    return {r["day"]: r["rows"] for r in reports}


# -- month_end: a schedule ---------------------------------------------------------------------


@app.flow(
    description="Close the books on the last day of the month",
    schedule=cron("0 22 L * *", timezone="Europe/Paris"),
)
def month_end() -> str:
    log.info("closing the month")
    return "closed"


# -- sync_inventory and daily_report: more schedules -------------------------------------------


@app.step
def count_stock(warehouse: str) -> int:
    count = random.randint(50, 200)
    log.info("warehouse %s: %d stock levels changed", warehouse, count)
    return count


@app.flow(description="Sync stock levels every minute", schedule=every(minutes=1))
def sync_inventory(warehouses: list[str] | None = None) -> int:
    return sum(count_stock(w) for w in warehouses or ["paris", "lyon"])


@app.flow(
    description="Sales report on weekdays at 06:00",
    schedule=cron("0 6 * * 1-5", timezone="Europe/Paris"),
)
def daily_report(day: str = "yesterday") -> str:
    log.info("building the sales report for %s", day)
    return f"report for {day} sent"
