"""A flow fired every second, for the exactly-once scheduler test."""

from legato import App
from legato.schedules import every

app = App()


@app.flow(schedule=every(seconds=1, catchup="skip"))
def tick() -> str:
    return "tick"
