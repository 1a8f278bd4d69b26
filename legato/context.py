"""The run context: what a flow's code sees while it executes, and durable step execution.

A :class:`RunContext` lives for one attempt of one run. Each step call takes the next
*position*; if the run's history already holds a succeeded step at that position, its recorded
result is returned without running the step (after checking the name matches: steps must be
called in a deterministic order). Otherwise the step runs, with in-place retries by its own
policy, and its start and end are checkpointed — fenced by the run's lease token.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import traceback as tb_module
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import serialization
from .errors import (
    Cancelled,
    DatabaseUnavailable,
    FlowTimeout,
    LeaseLost,
    NonDeterminismError,
    PayloadTooLarge,
    RunInterrupted,
    SerializationError,
    StepTimeout,
    Suspend,
)
from .store import Store
from .store.records import ClaimedRun, StepRecord

if TYPE_CHECKING:
    from .app import Step
    from .interrupt import Interrupter
    from .logcapture import LogWriter

T = TypeVar("T")
log = logging.getLogger("legato.worker")

current_run: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "legato_current_run", default=None
)
# The step executing in this thread or task: concurrent async steps each see their own.
current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "legato_current_step", default=None
)


def describe_error(exc: BaseException) -> str:
    """``ValueError: bad row 17`` — the one-line form used for ``error`` fields."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def format_traceback(exc: BaseException) -> str:
    """The exception's traceback without Legato's own frames, so the user's code stands out.

    If every frame is Legato's (an error raised by Legato itself), the full traceback is kept.
    """
    te = tb_module.TracebackException.from_exception(exc)
    seen: set[int] = set()
    current: tb_module.TracebackException | None = te
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        user_frames = [f for f in current.stack if not f.filename.startswith(_PACKAGE_DIR)]
        if user_frames:
            current.stack = tb_module.StackSummary.from_list(user_frames)
        current = current.__cause__ or current.__context__
    return "".join(te.format())


class RunContext:
    """State of one attempt of one run, available to code inside the run."""

    def __init__(
        self,
        store: Store,
        run: ClaimedRun,
        *,
        interrupter: Interrupter,
        max_payload_bytes: int,
    ) -> None:
        self.store = store
        self.run = run
        self.interrupter = interrupter
        self.max_payload_bytes = max_payload_bytes
        self.position = 0
        self.failed_step: str | None = None
        self.failed_exc: BaseException | None = None
        self.cancel_requested = threading.Event()
        self.lost = False
        self.interrupted = False
        #: The log writer of the worker executing this attempt (captured lines go there).
        self.log_writer: LogWriter | None = None
        self._fault_wake: threading.Event | None = None  # made at the first fault
        self.children = 0
        self._history: dict[int, StepRecord] | None = None if run.has_history else {}

    @property
    def step_name(self) -> str | None:
        """The step running in the calling thread or task (None between steps)."""
        return current_step.get()

    @property
    def run_id(self) -> str:
        return self.run.id

    @property
    def attempt(self) -> int:
        return self.run.attempt

    def next_child_key(self) -> str:
        """A deterministic idempotency key for the n-th subflow submitted by this run, so a
        recovered parent finds the children it already submitted instead of duplicating them."""
        self.children += 1
        return f"{self.run.id}/child/{self.children}"

    def check_boundary(self) -> None:
        """Called between steps: stop here if the run was cancelled or its lease was lost."""
        if self.interrupted:
            raise RunInterrupted(f"run {self.run.id}: its worker is stopping")
        if self.lost:
            raise LeaseLost(f"run {self.run.id} is owned by another worker now")
        if self.cancel_requested.is_set():
            raise Cancelled()

    def interrupt(self) -> None:
        """The worker gives this attempt up (shutdown): stop at the next write or boundary."""
        self.interrupted = True
        if self._fault_wake is not None:
            self._fault_wake.set()

    def mark_lost(self) -> None:
        """The lease belongs to another worker now: nothing more is written for this attempt."""
        self.lost = True
        if self._fault_wake is not None:
            self._fault_wake.set()

    def durably(self, what: str, operation: Callable[[], T]) -> T:
        """Run one of this attempt's database operations, riding out database faults.

        A :class:`DatabaseUnavailable` is the infrastructure's problem, not the run's: the
        operation is tried again with bounded, jittered backoff until it goes through (the
        writes are fenced, so one that lands after the lease was lost changes nothing), the
        lease is known lost (:class:`LeaseLost`), or the worker gives the attempt up
        (:class:`RunInterrupted`). The run's code never sees the fault.
        """
        failures = 0
        while True:
            try:
                return operation()
            except DatabaseUnavailable as exc:
                if self.interrupted:
                    raise RunInterrupted(f"run {self.run.id}: its worker is stopping") from None
                if self.lost:
                    raise LeaseLost(f"run {self.run.id} is owned by another worker now") from None
                if self._fault_wake is None:
                    self._fault_wake = threading.Event()
                if failures == 0:
                    log.warning(
                        "run %s: %s failed, retrying until the database is back: %s",
                        self.run.id,
                        what,
                        exc,
                    )
                self._fault_wake.wait(self.store.settings.backoff(failures))
                failures += 1

    def _recorded(self, position: int) -> StepRecord | None:
        if self._history is None:
            steps = self.durably(
                "reading the run's history", lambda: self.store.get_steps(self.run.id)
            )
            self._history = {s.position: s for s in steps}
        return self._history.get(position)

    def _begin(self, step: Step[Any, Any]) -> tuple[int, StepRecord | None]:
        self.check_boundary()
        position = self.position
        self.position += 1
        recorded = self._recorded(position)
        if recorded is not None and recorded.name != step.name:
            raise NonDeterminismError(
                f"run {self.run.id}: step #{position + 1} is recorded as {recorded.name!r} but "
                f"the code now calls {step.name!r}; steps must be called in a deterministic order"
            )
        return position, recorded

    def _started(self, position: int, step: Step[Any, Any]) -> None:
        if not self.durably(
            f"recording the start of step {step.name!r}",
            lambda: self.store.step_started(
                self.run.id, self.run.token, position, step.name, self.attempt
            ),
        ):
            self.mark_lost()
            raise LeaseLost(f"run {self.run.id}: lease lost before step {step.name!r}")

    def _succeeded(self, position: int, step: Step[Any, Any], value: Any) -> None:
        try:
            encoded = serialization.dumps(
                value, what=f"result of step {step.name!r}", limit=self.max_payload_bytes
            )
        except (SerializationError, PayloadTooLarge) as exc:
            # The step ran, but its result cannot be stored: the step fails with the reason.
            self._failed(position, step, exc, attempt=step.retry.attempts)
            raise
        if not self.durably(
            f"recording the result of step {step.name!r}",
            lambda: self.store.step_finished(
                self.run.id, self.run.token, position, "succeeded", result=encoded
            ),
        ):
            self.mark_lost()
            raise LeaseLost(f"run {self.run.id}: lease lost in step {step.name!r}")

    def _failed(
        self, position: int, step: Step[Any, Any], exc: BaseException, attempt: int
    ) -> bool:
        """Record a failed step attempt; return True if the step should be tried again."""
        error, traceback = describe_error(exc), format_traceback(exc)
        if not self.durably(
            f"recording the failure of step {step.name!r}",
            lambda: self.store.step_finished(
                self.run.id, self.run.token, position, "failed", error=error, traceback=traceback
            ),
        ):
            self.mark_lost()
            raise LeaseLost(f"run {self.run.id}: lease lost in step {step.name!r}") from exc
        if not isinstance(exc, FlowTimeout) and step.retry.should_retry(exc, attempt):
            return True
        self.failed_step = step.name
        self.failed_exc = exc
        return False

    def run_step(self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Execute (or replay) a synchronous step."""
        position, recorded = self._begin(step)
        if recorded is not None and recorded.status == "succeeded":
            return serialization.revive(serialization.loads(recorded.result), step.return_type)
        attempt = 0
        outer_step = current_step.get()
        while True:
            attempt += 1
            self._started(position, step)
            current_step.set(step.name)
            try:
                value = self._call_sync(step, args, kwargs)
            except (Cancelled, LeaseLost, Suspend, RunInterrupted):
                raise
            except BaseException as exc:
                current_step.set(outer_step)
                if not self._failed(position, step, exc, attempt):
                    raise
                self._backoff(step.retry.delay_for(attempt))
                continue
            current_step.set(outer_step)
            self._succeeded(position, step, value)
            return value

    def _call_sync(
        self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if step.timeout is None:
            return step.fn(*args, **kwargs)
        alarm = self.interrupter.arm(step.timeout, StepTimeout)
        try:
            return step.fn(*args, **kwargs)
        except StepTimeout:
            raise StepTimeout(f"step {step.name!r} timed out after {step.timeout:g}s") from None
        finally:
            self.interrupter.disarm(alarm)

    async def run_step_async(
        self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Execute (or replay) an ``async`` step."""
        position, recorded = self._begin(step)
        if recorded is not None and recorded.status == "succeeded":
            return serialization.revive(serialization.loads(recorded.result), step.return_type)
        attempt = 0
        outer_step = current_step.get()
        while True:
            attempt += 1
            self._started(position, step)
            current_step.set(step.name)
            try:
                coro: Awaitable[Any] = step.fn(*args, **kwargs)
                if step.timeout is not None:
                    try:
                        value = await asyncio.wait_for(coro, step.timeout)
                    except TimeoutError:
                        raise StepTimeout(
                            f"step {step.name!r} timed out after {step.timeout:g}s"
                        ) from None
                else:
                    value = await coro
            except (Cancelled, LeaseLost, Suspend, RunInterrupted, asyncio.CancelledError):
                raise
            except BaseException as exc:
                current_step.set(outer_step)
                if not self._failed(position, step, exc, attempt):
                    raise
                await asyncio.sleep(step.retry.delay_for(attempt))
                self.check_boundary()
                continue
            current_step.set(outer_step)
            self._succeeded(position, step, value)
            return value

    def sleep_until(self, wake_ms: int, name: str = "legato.sleep") -> None:
        """A durable sleep at the next step position: record the wake time, give the slot
        back, and return once the run is resumed at or after ``wake_ms``."""
        self.check_boundary()
        position = self.position
        self.position += 1
        recorded = self._recorded(position)
        if recorded is not None:
            if recorded.name != name:
                raise NonDeterminismError(
                    f"run {self.run.id}: step #{position + 1} is recorded as {recorded.name!r} "
                    f"but the code now calls {name!r}"
                )
            if recorded.status == "succeeded":
                return
            wake_ms = int(serialization.loads(recorded.result) or wake_ms)
        else:
            if not self.durably(
                f"recording the start of {name}",
                lambda: self.store.step_started(
                    self.run.id, self.run.token, position, name, self.attempt
                ),
            ):
                self.mark_lost()
                raise LeaseLost(f"run {self.run.id}: lease lost before {name}")
        if self.now_ms() >= wake_ms:
            if not self.durably(
                f"recording the end of {name}",
                lambda: self.store.step_finished(
                    self.run.id, self.run.token, position, "succeeded", result=str(wake_ms)
                ),
            ):
                self.mark_lost()
                raise LeaseLost(f"run {self.run.id}: lease lost in {name}")
            return
        self.durably(
            f"recording the wake time of {name}",
            lambda: self.store.record_step_result(
                self.run.id, self.run.token, position, str(wake_ms)
            ),
        )
        raise Suspend(wake_ms, name)

    def now_ms(self) -> int:
        """The database clock (riding out faults, see :meth:`durably`)."""
        return self.durably("reading the database clock", self.store.now_ms)

    def _backoff(self, seconds: float) -> None:
        if seconds > 0 and self.cancel_requested.wait(seconds):
            pass
        self.check_boundary()


def in_run() -> RunContext | None:
    """The context of the run executing in this thread or task, if any."""
    return current_run.get()
