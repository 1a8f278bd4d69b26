"""The worker: claims runs from its queues, executes them, and keeps their leases alive.

Threads of a worker process:

- the **claim loop** (the caller of :meth:`Worker.run`): claims up to the number of free
  slots in one statement, then waits for a wake-up (LISTEN/NOTIFY on PostgreSQL,
  ``PRAGMA data_version`` on SQLite) or the polling interval;
- **run threads** for sync flows and one **event loop** thread for ``async`` flows;
- the **heartbeat**: one statement extends the leases of all the worker's runs, reports
  cancel requests and lost leases; it also requeues runs whose lease expired anywhere;
- the **log writer** and the **deadline monitor** (timeouts).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import serialization
from .config import Settings
from .context import RunContext, current_run, describe_error, format_traceback
from .errors import (
    Cancelled,
    FlowTimeout,
    LeaseLost,
    NonDeterminismError,
    SerializationError,
    Suspend,
)
from .interrupt import Interrupter, _Alarm
from .isolation import ChildProcessDied, run_in_child
from .limits import default_max_recoveries
from .logcapture import Capture, LogWriter
from .outcomes import OutcomeWriter
from .pool import AsyncRunner, ThreadSlots
from .scheduler import Scheduler
from .store.base import Outcome, finish_outcome, retry_outcome, suspend_outcome
from .store.records import ClaimedRun

if TYPE_CHECKING:
    from .app import App, Flow

log = logging.getLogger("legato.worker")

TIMEOUT_GRACE_SECONDS = 1.0
FLOW_CONTROL_REFRESH_SECONDS = 1.0
GATED_IDLE_SECONDS = 0.05
GATED_PREFETCH_MAX_SECONDS = 0.05
RATE_PRUNE_SECONDS = 60.0


class Execution:
    """One attempt of one run inside this worker."""

    def __init__(self, claimed: ClaimedRun, ctx: RunContext, flow: Flow[Any, Any] | None) -> None:
        self.claimed = claimed
        self.ctx = ctx
        self.flow = flow
        self.claimed_at = time.monotonic()
        self.thread_id: int | None = None
        self.task: asyncio.Task[Any] | None = None
        self.alarms: list[_Alarm] = []
        self._done = False
        self._lock = threading.Lock()

    def take_outcome(self) -> bool:
        """Claim the right to write this attempt's outcome (False if already abandoned)."""
        with self._lock:
            if self._done:
                return False
            self._done = True
            return True

    @property
    def done(self) -> bool:
        return self._done


class Worker:
    """Executes runs of ``app``'s flows from ``queues`` with ``concurrency`` slots."""

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 8,
        settings: Settings | None = None,
        prefetch: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.app = app
        self.queues = list(dict.fromkeys(queues)) or ["default"]
        self.concurrency = concurrency
        self.settings = settings or app.settings
        # Runs claimed ahead of a free slot, so a slot that frees starts its next run at once
        # instead of after a claim round trip (they hold a lease while they wait).
        self.prefetch = (
            min(concurrency, self.settings.claim_batch) if prefetch is None else prefetch
        )
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.store = app.store
        self.lease_ms = int(self.settings.lease_seconds * 1000)
        self.interrupter = Interrupter()
        self.writer = LogWriter(self.store, self.settings.log_flush_seconds)
        self.capture = Capture(self.writer)
        self._active: dict[str, Execution] = {}
        self._active_lock = threading.Lock()
        self._slot_freed = threading.Event()
        self._stopping = threading.Event()
        self._force = threading.Event()
        self._heartbeat_now = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._threads: ThreadSlots | None = None
        self._async: AsyncRunner | None = None
        self._async_slots: asyncio.Semaphore | None = None
        self.scheduler = Scheduler(
            self.store, controls={name: f.control for name, f in app.flows.items()}
        )
        self._outcomes: OutcomeWriter[Execution] = OutcomeWriter(
            self.store,
            lambda exe, _written: self._release(exe),
            lambda exe: exe.claimed.id in self._gated_ids,
        )
        self.started = threading.Event()
        # Flow control: whether this worker's flows have limits, which of its queues are
        # strict or limited (re-read every second), and when to ask the gated claim again.
        self._gated_flows = any(f.control.gated for f in app.flows.values())
        self._limited_queues: set[str] = set()
        self._flow_control_read = -FLOW_CONTROL_REFRESH_SECONDS
        self._gated_idle_until = 0.0
        self._gated_freed = threading.Event()
        self._gated_ids: set[str] = set()
        self._max_recoveries = default_max_recoveries()
        self._pruned_at = 0.0
        self._run_seconds = 1.0  # moving average of claim-to-end time (gated prefetch)

    # -- lifecycle -----------------------------------------------------------------------

    def run(self, *, install_signals: bool = True) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT when ``install_signals``)."""
        self.app.register()
        self.store.register_worker(
            self.id, socket.gethostname(), os.getpid(), self.queues, self.concurrency
        )
        if any(not f.is_async for f in self.app.flows.values()) or not self.app.flows:
            self._threads = ThreadSlots(self.concurrency)
        if any(f.is_async for f in self.app.flows.values()):
            self._async = AsyncRunner()
        self.writer.start()
        self.capture.install()
        heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="legato-heartbeat", daemon=True
        )
        heartbeat.start()
        self.scheduler.interval = self.settings.scheduler_seconds
        threading.Thread(target=self.scheduler.run, name="legato-scheduler", daemon=True).start()
        if install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        log.info(
            "worker %s serving queues %s with %d slots",
            self.id,
            ",".join(self.queues),
            self.concurrency,
        )
        self.started.set()
        try:
            self._claim_loop()
        finally:
            self._shutdown(heartbeat)

    def stop(self, *, force: bool = False) -> None:
        """Stop claiming; running runs get the grace period (none with ``force``)."""
        self._stopping.set()
        if force:
            self._force.set()
        self._slot_freed.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping.is_set():
            log.warning("second signal: handing back running runs now")
            self.stop(force=True)
        else:
            log.info(
                "signal %s: no new runs; waiting up to %.0fs for %d running",
                signal.Signals(signum).name,
                self.settings.grace_seconds,
                len(self._active),
            )
            self.stop()

    # -- claiming ------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        wait = min(self.settings.poll_seconds, 0.5)
        while not self._stopping.is_set():
            self._slot_freed.clear()
            free = self.concurrency + self.prefetch - len(self._active)
            if free <= 0:
                self._slot_freed.wait(wait)
                continue
            want = min(free, self.settings.claim_batch)
            try:
                gated = self._claim_gated()
                for run in gated:
                    self._start(run)
                want -= len(gated)
                claimed = (
                    self.store.claim(self.id, self.queues, want, self.lease_ms) if want else []
                )
            except Exception as exc:
                log.error("claim failed: %s", exc)
                self._stopping.wait(wait)
                continue
            for run in claimed:
                self._start(run)
            if len(claimed) == want:
                continue
            try:
                for payload in self.store.listen(wait):
                    if payload == "cancel":
                        self._heartbeat_now.set()
                    elif payload == "slot":
                        self._gated_freed.set()
                    break
            except Exception as exc:  # pragma: no cover - listener reconnects next time
                log.warning("wake-up listener failed: %s", exc)
                self._stopping.wait(wait)

    def _refresh_flow_control(self) -> None:
        """Re-read queue settings (at most every second): is a gated claim needed here?"""
        now = time.monotonic()
        if now - self._flow_control_read < FLOW_CONTROL_REFRESH_SECONDS:
            return
        self._flow_control_read = now
        limited = {
            r["name"]
            for r in self.store.queue_settings()
            if r["strict"] or r["concurrency"] is not None
        }
        self._limited_queues = limited & set(self.queues)

    def _claim_gated(self) -> list[ClaimedRun]:
        """Claim runs with limits, or from limited queues, when this worker may have any.

        Runs are claimed for free slots, plus the prefetch while this worker's runs are short.
        An empty answer is not asked again for a short while, unless a gated run ended here.
        """
        self._refresh_flow_control()
        if not (self._gated_flows or self._limited_queues):
            return []
        # Prefetch (claim ahead of a free thread) only while runs here are short: a claimed
        # run holds its limit's slot, and must not wait long for a thread meanwhile.
        ahead = self.prefetch if self._run_seconds < GATED_PREFETCH_MAX_SECONDS else 0
        free = self.concurrency + ahead - len(self._active)
        now = time.monotonic()
        if free <= 0 or (now < self._gated_idle_until and not self._gated_freed.is_set()):
            return []
        self._gated_freed.clear()
        runs = self.store.claim_gated(
            self.id, self.queues, min(free, self.settings.claim_batch), self.lease_ms
        )
        self._gated_idle_until = now + (0 if runs else GATED_IDLE_SECONDS)
        for run in runs:
            self._gated_ids.add(run.id)
        return runs

    def _start(self, run: ClaimedRun) -> None:
        flow = self.app.flows.get(run.flow)
        ctx = RunContext(
            self.store,
            run,
            interrupter=self.interrupter,
            max_payload_bytes=self.settings.max_payload_bytes,
        )
        exe = Execution(run, ctx, flow)
        with self._active_lock:
            self._active[run.id] = exe
        if flow is not None and flow.is_async and flow.control.isolation != "process":
            assert self._async is not None
            self._async.submit(self._run_async(exe))
        else:
            if self._threads is None:
                self._threads = ThreadSlots(self.concurrency)
            self._threads.submit(lambda: self._run_sync(exe))

    # -- executing -----------------------------------------------------------------------

    def _watch_timeout(self, exe: Execution) -> None:
        """Past its timeout plus a grace, a run is failed even if its code does not stop."""
        flow = exe.flow
        if flow is not None and flow.timeout is not None:
            exe.alarms.append(
                self.interrupter.call_later(
                    flow.timeout + TIMEOUT_GRACE_SECONDS, lambda: self._enforce_timeout(exe)
                )
            )

    def _run_sync(self, exe: Execution) -> None:
        exe.thread_id = threading.get_ident()
        if exe.done:
            return
        flow = exe.flow
        if flow is not None and flow.control.isolation == "process":
            self._run_isolated(exe, flow)
            return
        self._watch_timeout(exe)
        if flow is None:
            self._record(
                exe,
                "error",
                LookupError(f"flow {exe.claimed.flow!r} is not registered in worker {self.id}"),
                retry=False,
            )
            return
        token = current_run.set(exe.ctx)
        try:
            kind, payload = self._call_sync(exe, flow)
        finally:
            current_run.reset(token)
        self._record(exe, kind, payload)

    def _run_isolated(self, exe: Execution, flow: Flow[Any, Any]) -> None:
        """One attempt in a child process (see :mod:`legato.isolation`)."""
        try:
            answer = run_in_child(
                flow, exe.ctx, self.store.url.raw, self.settings.max_payload_bytes
            )
        except Exception as exc:
            answer = {"kind": "died", "error": f"could not start the flow's process: {exc}"}
        kind = answer["kind"]
        if kind == "ok":
            self._record(exe, "ok_json", answer["result"])
        elif kind == "timeout":
            timeout = FlowTimeout(
                f"flow {flow.name!r} timed out after {flow.timeout:g}s (its process was killed)"
            )
            self._record(exe, "error", timeout)
        elif kind == "died":
            self._record(exe, "error", ChildProcessDied(answer["error"].split(": ", 1)[-1]))
        elif kind == "error":
            self._record(exe, "child_error", answer)
        elif kind == "suspend":
            self._record(exe, "suspend", Suspend(answer["wake_ms"]))
        elif kind == "cancelled":
            self._record(exe, "cancelled", None)
        else:
            self._record(exe, "lost", None)

    def _call_sync(self, exe: Execution, flow: Flow[Any, Any]) -> tuple[str, Any]:
        alarm = None
        try:
            try:
                params = flow.decode_params(serialization.loads(exe.claimed.params))
                if flow.timeout is not None:
                    alarm = self.interrupter.arm(flow.timeout, FlowTimeout)
                value = flow.fn(**params)
            finally:
                if alarm is not None:
                    self.interrupter.disarm(alarm)
            return "ok", value
        except FlowTimeout as timeout:
            # Keep the exception (and its traceback, and the step it interrupted), with a
            # message that says which limit was hit.
            timeout.args = (f"flow {flow.name!r} timed out after {flow.timeout:g}s",)
            return "error", timeout
        except Cancelled:
            return "cancelled", None
        except Suspend as suspend:
            return "suspend", suspend
        except LeaseLost:
            return "lost", None
        except BaseException as exc:
            return "error", exc

    async def _run_async(self, exe: Execution) -> None:
        if self._async_slots is None:
            self._async_slots = asyncio.Semaphore(self.concurrency)
        async with self._async_slots:  # prefetched runs wait here, not in the event loop
            if exe.done:
                return
            self._watch_timeout(exe)
            await self._execute_async(exe)

    async def _execute_async(self, exe: Execution) -> None:
        flow = exe.flow
        assert flow is not None
        exe.task = asyncio.current_task()
        current_run.set(exe.ctx)
        started = time.monotonic()
        try:
            params = flow.decode_params(serialization.loads(exe.claimed.params))
            coro = flow.fn(**params)
            value = await (asyncio.wait_for(coro, flow.timeout) if flow.timeout else coro)
            kind, payload = "ok", value
        except TimeoutError as timeout:
            error: BaseException = timeout
            if flow.timeout is not None and time.monotonic() - started >= flow.timeout:
                error = FlowTimeout(f"flow {flow.name!r} timed out after {flow.timeout:g}s")
            kind, payload = "error", error
        except (asyncio.CancelledError, Cancelled):
            kind, payload = (
                ("cancelled" if exe.ctx.cancel_requested.is_set() and not exe.ctx.lost else "lost"),
                None,
            )
        except Suspend as suspend:
            kind, payload = "suspend", suspend
        except LeaseLost:
            kind, payload = "lost", None
        except BaseException as exc:
            kind, payload = "error", exc
        self._record(exe, kind, payload)

    def _record(self, exe: Execution, kind: str, payload: Any, *, retry: bool = True) -> None:
        """Hand the outcome of an attempt to the outcome writer, unless it was abandoned."""
        if not exe.take_outcome():
            return
        for alarm in exe.alarms:
            self.interrupter.disarm(alarm)
        ctx, run = exe.ctx, exe.claimed
        try:
            self.capture.end_of_run(ctx)
            if self.writer.has_pending():
                self.writer.flush()
            outcome: Outcome | None = None
            if kind == "ok":
                try:
                    result = serialization.dumps(
                        payload,
                        what=f"result of flow {run.flow!r}",
                        limit=self.settings.max_payload_bytes,
                    )
                except SerializationError as exc:
                    kind, payload = "error", exc
                else:
                    outcome = finish_outcome(run.id, run.token, "succeeded", result=result)
            if kind == "ok_json":  # a child process's result, already JSON
                outcome = finish_outcome(run.id, run.token, "succeeded", result=payload)
            elif kind == "child_error":
                outcome = self._child_error_outcome(exe, payload)
            if kind == "suspend":
                outcome = suspend_outcome(run.id, run.token, payload.wake_ms)
            elif kind == "cancelled":
                outcome = finish_outcome(
                    run.id, run.token, "cancelled", error="cancelled on request"
                )
            elif kind == "error":
                outcome = self._error_outcome(exe, payload, retry=retry)
        except Exception:
            log.exception("could not record the outcome of run %s; its lease will expire", run.id)
            outcome = None
        if outcome is None:
            self._release(exe)
        else:
            self._outcomes.submit(exe, outcome)

    def _error_outcome(self, exe: Execution, exc: BaseException, *, retry: bool = True) -> Outcome:
        ctx, run = exe.ctx, exe.claimed
        failed_step = ctx.failed_step if exc is ctx.failed_exc else None
        error, tb = describe_error(exc), format_traceback(exc)
        policy = exe.flow.retry if exe.flow is not None else None
        if (
            retry
            and policy is not None
            and run.attempt < run.max_attempts
            and isinstance(exc, policy.retry_on)
            and not isinstance(exc, policy.dont_retry_on)
            and not isinstance(exc, NonDeterminismError)
        ):
            delay_ms = int(policy.delay_for(run.attempt) * 1000)
            return retry_outcome(
                run.id, run.token, delay_ms, error=error, traceback=tb, failed_step=failed_step
            )
        return finish_outcome(
            run.id, run.token, "failed", error=error, traceback=tb, failed_step=failed_step
        )

    def _child_error_outcome(self, exe: Execution, answer: dict[str, Any]) -> Outcome:
        """The outcome of an attempt that raised in a child process (it said if retryable)."""
        run = exe.claimed
        policy = exe.flow.retry if exe.flow is not None else None
        if answer["retryable"] and policy is not None and run.attempt < run.max_attempts:
            return retry_outcome(
                run.id,
                run.token,
                int(policy.delay_for(run.attempt) * 1000),
                error=answer["error"],
                traceback=answer["traceback"],
                failed_step=answer["failed_step"],
            )
        return finish_outcome(
            run.id,
            run.token,
            "failed",
            error=answer["error"],
            traceback=answer["traceback"],
            failed_step=answer["failed_step"],
        )

    def _enforce_timeout(self, exe: Execution) -> None:
        """The run's code ignored its timeout past the grace: fail it and free the slot."""
        if not exe.take_outcome():
            return
        flow = exe.flow
        assert flow is not None and flow.timeout is not None
        log.warning(
            "run %s ignored its %gs timeout: abandoning its thread", exe.claimed.id, flow.timeout
        )
        self._abandon_code(exe)
        timeout = FlowTimeout(
            f"flow {flow.name!r} timed out after {flow.timeout:g}s "
            "(the code did not stop; its thread was abandoned)"
        )
        self._outcomes.submit(exe, self._error_outcome(exe, timeout))

    def _abandon_code(self, exe: Execution) -> None:
        """Stop a run's code from doing more: fence it, cancel its task, replace its thread."""
        exe.ctx.lost = True
        exe.ctx.cancel_requested.set()
        if exe.task is not None and self._async is not None:
            self._async.call_soon(exe.task.cancel)
        elif exe.thread_id is not None and self._threads is not None:
            self._threads.retire(exe.thread_id)

    def _release(self, exe: Execution) -> None:
        with self._active_lock:
            self._active.pop(exe.claimed.id, None)
        took = time.monotonic() - exe.claimed_at
        self._run_seconds += (took - self._run_seconds) * 0.2
        if exe.claimed.id in self._gated_ids:
            self._gated_ids.discard(exe.claimed.id)
            self._gated_freed.set()
        self._slot_freed.set()

    # -- heartbeat -----------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_seconds
        while not self._heartbeat_stop.is_set():
            self._heartbeat_now.wait(interval)
            self._heartbeat_now.clear()
            if self._heartbeat_stop.is_set():
                return
            try:
                self.heartbeat()
            except Exception as exc:
                log.error("heartbeat failed: %s", exc)

    def heartbeat(self) -> None:
        """Extend leases, apply cancel requests, drop lost runs, requeue expired ones."""
        began = time.monotonic()
        rows = self.store.heartbeat(self.id, len(self._active), self.lease_ms)
        owned = {r["id"]: r for r in rows}
        with self._active_lock:
            active = list(self._active.values())
        for exe in active:
            if exe.claimed_at >= began or exe.done:
                continue
            row = owned.get(exe.claimed.id)
            if row is None or row["lease_token"] != exe.claimed.token:
                if exe.take_outcome():
                    log.warning("lost the lease of run %s: another worker owns it", exe.claimed.id)
                    self._abandon_code(exe)
                    self._release(exe)
            elif row["cancel_requested"] and not exe.ctx.cancel_requested.is_set():
                exe.ctx.cancel_requested.set()
                if exe.task is not None and self._async is not None:
                    self._async.call_soon(exe.task.cancel)
        requeued, poisoned = self.store.recover_expired(self._max_recoveries)
        if requeued:
            log.warning("requeued %d run(s) whose worker stopped heartbeating", requeued)
        for row in poisoned:
            log.error("run %s failed as poison: %s", row["id"], row["error"])
        if time.monotonic() - self._pruned_at > RATE_PRUNE_SECONDS:
            self._pruned_at = time.monotonic()
            self.store.prune_rate_starts()

    # -- shutdown ------------------------------------------------------------------------

    def _shutdown(self, heartbeat: threading.Thread) -> None:
        self.scheduler.stop()
        deadline = time.monotonic() + self.settings.grace_seconds
        while self._active and not self._force.is_set() and time.monotonic() < deadline:
            self._slot_freed.clear()
            self._slot_freed.wait(0.05)
        with self._active_lock:
            remaining = list(self._active.values())
        for exe in remaining:
            if exe.take_outcome():
                self._abandon_code(exe)
        self._outcomes.stop()
        try:
            handed = self.store.hand_back_all(self.id)
            if handed:
                log.warning("handed back %d running run(s); they resume on another worker", handed)
        except Exception:
            log.exception("could not hand back runs; their leases will expire")
        self._heartbeat_stop.set()
        self._heartbeat_now.set()
        heartbeat.join(timeout=5)
        self.writer.stop()
        self.capture.uninstall()
        try:
            self.store.worker_stopped(self.id)
        except Exception:
            log.exception("could not mark worker %s stopped", self.id)
        if self._threads is not None:
            self._threads.shutdown(self.concurrency)
        if self._async is not None:
            self._async.stop()
        log.info("worker %s stopped", self.id)
