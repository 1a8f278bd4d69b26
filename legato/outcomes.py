"""Group commit of attempt outcomes: many runs' endings written in one transaction.

Run threads hand their outcome (a fenced write) to :class:`OutcomeWriter` and return; its
thread writes whatever has queued up in one transaction, then releases those runs' slots.
When outcomes arrive one at a time nothing waits: a lone outcome is written at once. Under
load, one commit serves many runs — the difference between one fsync per run and one per
batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from .store import Store
from .store.base import Outcome

log = logging.getLogger("legato.worker")

T = TypeVar("T")
MAX_BATCH = 256


class OutcomeWriter(Generic[T]):
    """Writes outcomes in batches; calls ``done(item, written)`` for each afterwards."""

    def __init__(
        self,
        store: Store,
        done: Callable[[T, bool], None],
        wakes: Callable[[T], bool] | None = None,
    ) -> None:
        self.store = store
        self.done = done
        self.wakes = wakes  # does this item's end free a limit's slot (wake other workers)?
        self._queue: queue.SimpleQueue[tuple[T, Outcome] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="legato-outcomes", daemon=True)
        self._thread.start()

    def submit(self, item: T, outcome: Outcome) -> None:
        self._queue.put((item, outcome))

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[tuple[T, Outcome]]) -> None:
        try:
            wake = self.wakes is not None and any(self.wakes(item) for item, _ in batch)
            outcomes = [outcome for _, outcome in batch]
            written = (
                self.store.write_outcomes(outcomes, wake=True)
                if wake
                else self.store.write_outcomes(outcomes)
            )
        except Exception:
            log.exception("could not write %d outcome(s); their leases will expire", len(batch))
            written = [False] * len(batch)
        for (item, outcome), ok in zip(batch, written, strict=True):
            if not ok:
                log.warning("outcome of run %s not written: lease lost", outcome[1]["run_id"])
            try:
                self.done(item, ok)
            except Exception:  # pragma: no cover - done callbacks only release slots
                log.exception("outcome callback failed")

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout=30)
