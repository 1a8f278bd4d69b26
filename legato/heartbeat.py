"""The background loops of a worker that keep leases and recover runs, riding out faults.

- :class:`Loop` runs one iteration every ``interval`` seconds in its own thread. An iteration
  that fails (the database is unreachable, a session was cut, a statement timed out) is tried
  again after a bounded, jittered backoff instead of the usual interval: the loop never dies
  of a database fault, and its first success after a fault comes within
  ``LEGATO_RECONNECT_MAX_SECONDS`` of the database being back.
- :class:`Health` remembers when the worker last extended its leases and when it last met a
  fault, so that recovery waits after a fault until the worker's own leases were extended
  again, plus one heartbeat interval. Workers cut off together each get the time to extend
  theirs before any of them takes runs from the others.

The iterations themselves are :meth:`legato.worker.Worker.beat_once` (extend leases, apply
cancel requests, drop lost runs, hand back orphans) and
:meth:`legato.worker.Worker.maintain_once` (requeue expired runs, fail poison runs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .config import Settings

log = logging.getLogger("legato.worker")


class Health:
    """What the worker's loops last saw of the database (monotonic times)."""

    def __init__(self) -> None:
        self.fault_at = float("-inf")
        self.beat_at = float("-inf")

    def fault(self) -> None:
        self.fault_at = time.monotonic()

    def beat(self, started: float) -> None:
        self.beat_at = started

    def may_recover(self, settle_seconds: float, now: float | None = None) -> bool:
        """Whether recovery may take runs now: no fault, or this worker's leases were
        extended after the last one, ``settle_seconds`` ago or more."""
        now = time.monotonic() if now is None else now
        if self.fault_at == float("-inf"):
            return True
        return self.beat_at > self.fault_at and now - self.fault_at >= settle_seconds


class Loop:
    """Calls ``iteration()`` every ``interval`` seconds in a thread of its own, until stopped.

    ``wake`` (optional) starts the next iteration at once. A failed iteration is logged once
    per fault and retried after ``settings.backoff(n)``.
    """

    def __init__(
        self,
        name: str,
        iteration: Callable[[], None],
        interval: float,
        settings: Settings,
        health: Health,
        wake: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.iteration = iteration
        self.interval = interval
        self.settings = settings
        self.health = health
        self.wake = wake or threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"legato-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            pause = self.interval if failures == 0 else self.settings.backoff(failures)
            self.wake.wait(pause)
            self.wake.clear()
            if self._stop.is_set():
                return
            try:
                self.iteration()
            except Exception as exc:
                self.health.fault()
                if failures == 0:
                    log.error("%s failed, retrying until the database is back: %s", self.name, exc)
                failures += 1
            else:
                if failures:
                    log.info("%s works again after %d failed attempt(s)", self.name, failures)
                failures = 0

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
