"""Fill a database with runs of every example flow (used by ``make demo``).

    LEGATO_DATABASE_URL=sqlite:///demo.db python examples/submit_demo.py
    legato worker examples/flows.py --db sqlite:///demo.db

The script only submits: the runs wait in their queue until a worker starts. Runs with an
idempotency key are created once, however often the script runs.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flows import (
    app,
    backfill,
    broken,
    chatty,
    crawl,
    crunch,
    etl,
    export,
    flaky,
    month_end,
)

from legato import RunHandle


def main() -> None:
    if not os.environ.get("LEGATO_DATABASE_URL"):
        sys.exit("set LEGATO_DATABASE_URL, e.g. LEGATO_DATABASE_URL=sqlite:///demo.db")
    runs: list[tuple[str, RunHandle]] = []

    def add(name: str, handle: RunHandle) -> None:
        runs.append((name, handle))

    for day in ("2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"):
        add("etl", etl.submit(day))
    add("etl", etl.submit("2026-11-24", currency="USD", table="daily_orders_usd"))
    add("etl", etl.with_options(idempotency_key="demo-etl-2026-11-01").submit("2026-11-01"))
    add("etl", etl.with_options(idempotency_key="demo-etl-2026-11-01").submit("2026-11-01"))
    add("etl", etl.with_options(priority=10).submit("2026-11-25"))  # claimed first
    add("etl", etl.with_options(delay=3600).submit("2026-11-26"))  # status: scheduled

    for failures in (0, 1, 2, 3):
        add("flaky", flaky.submit(failures=failures))
    add("broken", broken.submit())
    add("broken", broken.submit(batch="2026-10"))
    add("chatty", chatty.submit())
    add("chatty", chatty.submit(name="Ada", lines=5))
    add("crawl", crawl.submit())
    add("crawl", crawl.submit(urls=[f"https://example.org/docs/{i}" for i in range(8)]))
    add("crunch", crunch.submit())
    cancelled = crunch.submit(chunks=3)
    cancelled.cancel()  # still queued: cancelled at once
    add("crunch", cancelled)
    add("export", export.submit(seconds=1))  # succeeds
    add("export", export.submit())  # times out after 3 s
    add("backfill", backfill.submit(["2026-11-17", "2026-11-18", "2026-11-19"]))
    add("month_end", month_end.submit())

    ids = {h.id for _, h in runs}
    counts = Counter(name for name, _ in runs)
    print(f"submitted {len(runs)} runs ({len(ids)} distinct) to {app.database_url}:")
    for name, count in sorted(counts.items()):
        print(f"  {name:<10} {count}")
    print("run them, with the dashboard on http://127.0.0.1:8000/: legato up examples/flows.py")
    app.close()


if __name__ == "__main__":
    main()
