"""10,000 cron schedules firing every minute on one no-op flow (for bench_scheduler.py)."""

import os

from legato import App
from legato.schedules import cron

COUNT = int(os.environ.get("BENCH_SCHEDULES", "10000"))

app = App()


@app.flow(schedule=[cron("* * * * *", name=f"s{i}", catchup="skip") for i in range(COUNT)])
def minutely() -> None:
    return None
