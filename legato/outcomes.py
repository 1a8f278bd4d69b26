"""Group commit of attempt outcomes: many runs' endings written in one transaction.

Run threads hand their outcome (a fenced write) to :class:`OutcomeWriter` and return; its
thread writes whatever has queued up in one transaction, then releases those runs' slots.
When outcomes arrive one at a time nothing waits: a lone outcome is written at once. Under
load, one commit serves many runs — the difference between one fsync per run and one per
batch.

Outcomes are kept until they are written. A database fault (a restart, a cut connection, a
timeout) does not lose them: the batch is written again after a bounded, jittered backoff,
for as long as it takes, and its runs keep their slots (and their leases, which the heartbeat
extends) meanwhile. The writes stay fenced: one whose lease was lost in the meantime is
refused, and the run is given up with a log line. A batch the database refuses for another
reason is written outcome by outcome, so that one bad outcome cannot hold back the others; an
outcome that still cannot be stored ends its run ``failed`` with the reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from .serialization import storable_text
from .store import Store
from .store.base import Outcome, finish_outcome

log = logging.getLogger("legato.worker")

T = TypeVar("T")
MAX_BATCH = 256
_TEXT_FIELDS = ("result", "error", "traceback", "failed_step")


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
        self._give_up_at: float | None = None  # set by stop(): keep retrying until then
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
            try:
                self._write(batch)
            except Exception:  # pragma: no cover - the writer must outlive any surprise
                log.exception("outcome writer: unexpected error; its runs' leases will expire")
            if stop:
                return

    def _write(self, batch: list[tuple[T, Outcome]]) -> None:
        outcomes = [outcome for _, outcome in batch]
        wake = self.wakes is not None and any(self.wakes(item) for item, _ in batch)
        written = self._write_through_faults(outcomes, wake)
        for (item, outcome), ok in zip(batch, written, strict=True):
            if not ok:
                log.warning(
                    "gave up run %s: its outcome was refused, the lease is lost "
                    "(another worker owns the run now)",
                    outcome[1]["run_id"],
                )
            try:
                self.done(item, ok)
            except Exception:  # pragma: no cover - done callbacks only release slots
                log.exception("outcome callback failed")

    def _write_through_faults(self, outcomes: list[Outcome], wake: bool) -> list[bool]:
        """Write ``outcomes``, again and again across database faults (see the module)."""
        failures = 0
        while True:
            try:
                written = (
                    self.store.write_outcomes(outcomes, wake=True)
                    if wake
                    else self.store.write_outcomes(outcomes)
                )
            except Exception as exc:
                if not self.store.is_transient(exc):
                    log.error("could not write %d outcome(s): %s", len(outcomes), exc)
                    return [self._write_alone(o) for o in outcomes]
                if self._give_up_at is not None and time.monotonic() >= self._give_up_at:
                    for _, params in outcomes:
                        log.error(
                            "gave up run %s: its outcome could not be written before the "
                            "worker stopped (%s); another worker resumes it once its lease "
                            "expires",
                            params["run_id"],
                            exc,
                        )
                    return [False] * len(outcomes)
                if failures == 0:
                    log.warning(
                        "could not write %d outcome(s), keeping them until the database is "
                        "back: %s",
                        len(outcomes),
                        exc,
                    )
                time.sleep(self.store.settings.backoff(failures))
                failures += 1
                continue
            if failures:
                # Refused after a fault: perhaps the first try was applied before the
                # connection broke.
                written = [
                    ok or self.store.outcome_applied(o)
                    for ok, o in zip(written, outcomes, strict=True)
                ]
                log.info(
                    "wrote %d kept outcome(s) after %d failed attempt(s)", len(outcomes), failures
                )
            return written

    def _write_alone(self, outcome: Outcome) -> bool:
        """One outcome on its own; if the database refuses its text, without what it cannot
        store; if it still refuses, the run fails with the reason instead."""
        name, params = outcome
        cleaned = {
            k: storable_text(v) if k in _TEXT_FIELDS and isinstance(v, str) else v
            for k, v in params.items()
        }
        reason: Exception | None = None
        for attempt in ((name, params), (name, cleaned)):
            try:
                return self.store.write_outcomes([attempt])[0]
            except Exception as exc:
                reason = exc
        fallback = finish_outcome(
            params["run_id"],
            params["token"],
            "failed",
            error=f"OutcomeNotStored: the outcome of this attempt could not be stored: {reason}",
        )
        try:
            return self.store.write_outcomes([fallback])[0]
        except Exception:
            log.exception("could not record the outcome of run %s", params["run_id"])
            return False

    def stop(self, grace: float = 30) -> None:
        """Write what is queued (retrying across faults for up to ``grace`` seconds), then end
        the thread."""
        self._give_up_at = time.monotonic() + grace
        self._queue.put(None)
        self._thread.join(timeout=grace + 30)
