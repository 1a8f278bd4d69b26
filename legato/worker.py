"""The worker: claims runs from its queues, executes them, and keeps their leases alive.

Threads of a worker process:

- the **claim loop** (the caller of :meth:`Worker.run`): claims up to the number of free
  slots in one statement, then waits for a wake-up (LISTEN/NOTIFY on PostgreSQL,
  ``PRAGMA data_version`` on SQLite) or the polling interval;
- **run threads** for sync flows and one **event loop** thread for ``async`` flows;
- the **heartbeat** (:meth:`Worker.beat_once`): one statement extends the leases of the runs
  the worker holds, records which of them are executing, reports cancel requests and lost
  leases, and hands back runs the database gives the worker that it does not hold;
- the **maintenance** loop (:meth:`Worker.maintain_once`): requeues runs whose lease expired
  anywhere, fails poison runs;
- the **outcome writer**, the **log writer** and the **deadline monitor** (timeouts).

A database fault is the worker's problem, never a run's (see ``docs/reliability.md``): every
loop retries after a bounded, jittered backoff, run threads wait at their next checkpoint
until it is written, outcomes and log lines are kept until they are written, and every run
the worker gives up is named in its log with the reason.
"""

from __future__ import annotations

import asyncio
import collections
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
    DatabaseUnavailable,
    FlowTimeout,
    LeaseLost,
    RunInterrupted,
    Suspend,
)
from .heartbeat import Health, Loop
from .interrupt import Interrupter, _Alarm
from .isolation import ChildProcessDied, run_in_child
from .limits import default_max_recoveries
from .logcapture import Capture, LogWriter
from .outcomes import OutcomeWriter
from .pool import AsyncRunner, ThreadSlots
from .scheduler import Scheduler
from .store.base import (
    Outcome,
    finish_outcome,
    hand_back_outcome,
    retry_outcome,
    suspend_outcome,
)
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

    def __init__(
        self,
        claimed: ClaimedRun,
        ctx: RunContext,
        flow: Flow[Any, Any] | None,
        *,
        claimed_executing: bool = False,
    ) -> None:
        self.claimed = claimed
        self.ctx = ctx
        self.flow = flow
        self.claimed_at = time.monotonic()
        self.thread_id: int | None = None
        self.task: asyncio.Task[Any] | None = None
        self.alarms: list[_Alarm] = []
        #: Runs in a child process: its crashes cannot take the worker down.
        self.isolated = flow is not None and flow.control.isolation == "process"
        #: The run's code is running in this process now (admitted, not yet ended).
        self.executing = False
        #: The claim recorded it as executing (it was to start at once).
        self.claimed_executing = claimed_executing and not claimed.suspect
        #: What the heartbeat reports (the poison evidence): executing, or about to, having
        #: been claimed as such; never an isolated run (its crashes cannot kill the worker).
        self.marked = self.claimed_executing and not self.isolated
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
        self.writer = LogWriter(
            self.store,
            self.settings.log_flush_seconds,
            max_line_bytes=self.settings.max_log_line_bytes,
        )
        self.capture = Capture(self.writer)
        self._active: dict[str, Execution] = {}
        self._active_lock = threading.Lock()
        # Held from a claim's statement until its runs are in _active, and by the heartbeat
        # while it reads _active and writes: a run the database gives this worker but it
        # does not hold (an orphan, handed back) is never one whose claim is in flight.
        self._claim_lock = threading.Lock()
        self._slot_freed = threading.Event()
        self._stopping = threading.Event()
        self._force = threading.Event()
        self._heartbeat_now = threading.Event()
        self._threads: ThreadSlots | None = None
        self._async: AsyncRunner | None = None
        self._async_slots: asyncio.Semaphore | None = None
        self.health = Health()
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
        # Suspects (a worker died while they were executing) run alone, one at a time, so a
        # crash during one is blamed on it exactly. _executing counts runs executing here.
        self._admission = threading.Condition()
        self._executing = 0
        self._suspects: collections.deque[Execution] = collections.deque()
        self._solo: Execution | None = None
        self._loops: list[Loop] = []

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
        interval = self.settings.heartbeat_seconds
        self._loops = [
            Loop(
                "heartbeat",
                self.beat_once,
                interval,
                self.settings,
                self.health,
                self._heartbeat_now,
            ),
            Loop("maintenance", self.maintain_once, interval, self.settings, self.health),
        ]
        for loop in self._loops:
            loop.start()
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
            self._shutdown()

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
        failures = 0
        while not self._stopping.is_set():
            self._slot_freed.clear()
            free = self.concurrency + self.prefetch - len(self._active)
            if free <= 0 or self._suspects or self._solo is not None:
                # Full, or a suspect waits to run alone: claim nothing more meanwhile.
                self._slot_freed.wait(wait)
                continue
            want = min(free, self.settings.claim_batch)
            try:
                claimed = self.claim_once(want)
            except Exception as exc:
                self.health.fault()
                if failures == 0:
                    log.error("claim failed, retrying until the database is back: %s", exc)
                failures += 1
                self._stopping.wait(self.settings.backoff(failures))
                continue
            if failures:
                log.info("claims work again after %d failed attempt(s)", failures)
                failures = 0
            if claimed == want:
                continue
            try:
                for payload in self.store.listen(wait):
                    if payload == "cancel":
                        self._heartbeat_now.set()
                    elif payload == "slot":
                        self._gated_freed.set()
                    break
            except Exception:  # the listener reconnects next time; polling covers the gap
                self._stopping.wait(min(wait, self.settings.backoff(1)))

    def claim_once(self, want: int) -> int:
        """Claim up to ``want`` runs and start them; returns how many were claimed.

        Runs that start at once (a thread is free for each) are claimed as *executing*, the
        evidence poison detection needs; runs claimed ahead of a free slot are not.
        """
        with self._claim_lock:
            immediate = max(0, self.concurrency - len(self._active))
            gated, gated_executing = self._claim_gated(immediate)
            for run in gated:
                self._start(run, gated_executing)
            count = len(gated)
            want -= count
            immediate = max(0, immediate - count)
            for limit, executing in ((min(want, immediate), True), (want - immediate, False)):
                if limit <= 0:
                    continue
                claimed = self.store.claim(
                    self.id, self.queues, limit, self.lease_ms, executing=executing
                )
                for run in claimed:
                    self._start(run, executing)
                count += len(claimed)
                if len(claimed) < limit:
                    break
        self._dispatch_suspect()
        return count

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

    def _claim_gated(self, immediate: int) -> tuple[list[ClaimedRun], bool]:
        """Claim runs with limits, or from limited queues, when this worker may have any.

        Runs are claimed for free slots, plus the prefetch while this worker's runs are short.
        An empty answer is not asked again for a short while, unless a gated run ended here.
        """
        self._refresh_flow_control()
        if not (self._gated_flows or self._limited_queues):
            return [], False
        # Prefetch (claim ahead of a free thread) only while runs here are short: a claimed
        # run holds its limit's slot, and must not wait long for a thread meanwhile.
        ahead = self.prefetch if self._run_seconds < GATED_PREFETCH_MAX_SECONDS else 0
        free = self.concurrency + ahead - len(self._active)
        now = time.monotonic()
        if free <= 0 or (now < self._gated_idle_until and not self._gated_freed.is_set()):
            return [], False
        self._gated_freed.clear()
        limit = min(free, self.settings.claim_batch)
        executing = limit <= immediate
        runs = self.store.claim_gated(
            self.id, self.queues, limit, self.lease_ms, executing=executing
        )
        self._gated_idle_until = now + (0 if runs else GATED_IDLE_SECONDS)
        for run in runs:
            self._gated_ids.add(run.id)
        return runs, executing

    def _start(self, run: ClaimedRun, claimed_executing: bool = False) -> None:
        flow = self.app.flows.get(run.flow)
        ctx = RunContext(
            self.store,
            run,
            interrupter=self.interrupter,
            max_payload_bytes=self.settings.max_payload_bytes,
        )
        ctx.log_writer = self.writer
        exe = Execution(run, ctx, flow, claimed_executing=claimed_executing)
        with self._active_lock:
            self._active[run.id] = exe
        if run.suspect and not exe.isolated:
            with self._admission:
                self._suspects.append(exe)
            log.warning(
                "run %s is a suspect (a worker died while it was executing): it runs alone",
                run.id,
            )
            return
        self._submit(exe)

    def _submit(self, exe: Execution) -> None:
        flow = exe.flow
        if flow is not None and flow.is_async and not exe.isolated:
            if self._async is None:
                self._async = AsyncRunner()
            self._async.submit(self._run_async(exe))
        else:
            if self._threads is None:
                self._threads = ThreadSlots(self.concurrency)
            self._threads.submit(lambda: self._run_sync(exe))

    # -- admission: suspects run alone ---------------------------------------------------

    def _dispatch_suspect(self) -> None:
        """Start the next suspect when nothing else executes here (it then runs alone)."""
        with self._admission:
            while self._suspects and self._suspects[0].done:  # given up while it waited
                self._suspects.popleft()
                self._admission.notify_all()
            if self._solo is not None or self._executing or not self._suspects:
                return
            exe = self._suspects.popleft()
            self._solo = exe
        flow = exe.flow
        if flow is not None and flow.is_async:
            self._submit(exe)
        else:  # its own thread: a pool thread may be waiting for it to end
            threading.Thread(
                target=self._run_sync, args=(exe,), name="legato-suspect", daemon=True
            ).start()

    def _try_admit(self, exe: Execution) -> bool:
        """Let ``exe``'s code start unless a suspect runs (or waits to run) alone."""
        with self._admission:
            if exe is not self._solo and (self._solo is not None or self._suspects):
                return False
            self._executing += 1
            exe.executing = True
            exe.marked = not exe.isolated
            return True

    def _admit(self, exe: Execution) -> bool:
        """Wait until ``exe`` may start; False if it was abandoned meanwhile."""
        while not self._try_admit(exe):
            if exe.done:
                return False
            with self._admission:
                self._admission.wait(0.2)
        return True

    async def _admit_async(self, exe: Execution) -> bool:
        while not self._try_admit(exe):
            if exe.done:
                return False
            await asyncio.sleep(0.02)
        return True

    def _finished_executing(self, exe: Execution) -> None:
        with self._admission:
            exe.marked = False
            if exe.executing:
                exe.executing = False
                self._executing -= 1
            if exe is self._solo:
                self._solo = None
            waiting = self._solo is not None or bool(self._suspects)
            if exe.claimed.suspect or waiting:
                self._admission.notify_all()
        if waiting:
            self._dispatch_suspect()

    def _mark_start(self, exe: Execution) -> None:
        """Record the start of the run's code when the claim did not and the next heartbeat
        would be too late for the evidence: a suspect, or a recovered run claimed ahead of a
        free slot. An isolated run the claim marked is unmarked (a crash of its child process
        cannot take the worker down)."""
        run = exe.claimed
        if self._needs_mark(exe):
            executing = not exe.isolated
            exe.ctx.durably(
                "recording the run's start",
                lambda: self.store.mark_executing(run.id, run.token, executing=executing),
            )

    @staticmethod
    def _needs_mark(exe: Execution) -> bool:
        run = exe.claimed
        if exe.isolated:
            return exe.claimed_executing
        return run.suspect or (run.recovered and not exe.claimed_executing)

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
        if exe.done:  # given up before it started
            self._finished_executing(exe)
            return
        flow = exe.flow
        if flow is not None and exe.isolated:
            self._run_isolated(exe, flow)
            return
        if not self._admit(exe):
            self._finished_executing(exe)
            return
        try:
            self._execute_sync(exe, flow)
        finally:
            self._finished_executing(exe)

    def _execute_sync(self, exe: Execution, flow: Flow[Any, Any] | None) -> None:
        if flow is None:
            self._record(
                exe,
                "error",
                LookupError(f"flow {exe.claimed.flow!r} is not registered in worker {self.id}"),
                retry=False,
            )
            return
        try:
            self._mark_start(exe)
        except (LeaseLost, RunInterrupted) as exc:
            self._record(exe, "lost" if isinstance(exc, LeaseLost) else "handback", None)
            return
        if exe.ctx.cancel_requested.is_set():
            self._record(exe, "cancelled", None)
            return
        self._watch_timeout(exe)
        token = current_run.set(exe.ctx)
        try:
            kind, payload = self._call_sync(exe, flow)
        finally:
            current_run.reset(token)
        self._record(exe, kind, payload)

    def _run_isolated(self, exe: Execution, flow: Flow[Any, Any]) -> None:
        """One attempt in a child process (see :mod:`legato.isolation`)."""
        try:
            self._mark_start(exe)
        except (LeaseLost, RunInterrupted) as exc:
            self._record(exe, "lost" if isinstance(exc, LeaseLost) else "handback", None)
            return
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
        elif kind == "handback":
            self._record(exe, "handback", None)
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
        except BaseException as exc:
            return self._classify(exe, exc)

    def _classify(self, exe: Execution, exc: BaseException) -> tuple[str, Any]:
        """What an exception out of a run's code means for its attempt."""
        if isinstance(exc, Cancelled):
            return "cancelled", None
        if isinstance(exc, Suspend):
            return "suspend", exc
        if isinstance(exc, LeaseLost):
            return "lost", None
        if isinstance(exc, RunInterrupted):
            return "handback", None
        if isinstance(exc, DatabaseUnavailable) and exc.url == self.store.url.raw:
            # Legato's own database failed under the run's code (a call the run made to it):
            # a fault of the infrastructure, not of the run. The attempt is not counted.
            log.warning("run %s: the database failed under its code: %s", exe.claimed.id, exc)
            return "handback", None
        return "error", exc

    async def _run_async(self, exe: Execution) -> None:
        if self._async_slots is None:
            self._async_slots = asyncio.Semaphore(self.concurrency)
        async with self._async_slots:  # prefetched runs wait here, not in the event loop
            if exe.done or not await self._admit_async(exe):
                self._finished_executing(exe)
                return
            try:
                try:
                    if self._needs_mark(exe):
                        await asyncio.to_thread(self._mark_start, exe)
                except (LeaseLost, RunInterrupted) as exc:
                    kind = "lost" if isinstance(exc, LeaseLost) else "handback"
                    self._record(exe, kind, None)
                    return
                if exe.ctx.cancel_requested.is_set():
                    self._record(exe, "cancelled", None)
                    return
                self._watch_timeout(exe)
                await self._execute_async(exe)
            finally:
                self._finished_executing(exe)

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
        except asyncio.CancelledError:
            kind, payload = self._cancelled_task(exe), None
        except BaseException as exc:
            kind, payload = self._classify(exe, exc)
        self._record(exe, kind, payload)

    @staticmethod
    def _cancelled_task(exe: Execution) -> str:
        ctx = exe.ctx
        if ctx.interrupted:
            return "handback"
        if ctx.cancel_requested.is_set() and not ctx.lost:
            return "cancelled"
        return "lost"

    def _record(self, exe: Execution, kind: str, payload: Any, *, retry: bool = True) -> None:
        """Hand the outcome of an attempt to the outcome writer, unless it was abandoned.

        Every attempt that reaches here ends with an outcome or a log line saying why not:
        an outcome that cannot be built (a result over the size limit, not JSON) fails the
        attempt with the reason, so nothing is left ``running``.
        """
        if not exe.take_outcome():
            return
        for alarm in exe.alarms:
            self.interrupter.disarm(alarm)
        ctx, run = exe.ctx, exe.claimed
        try:
            self.capture.end_of_run(ctx)
            if self.writer.has_pending():
                self.writer.flush(wait=False)
        except Exception:  # the lines stay buffered; the writer retries them
            log.exception("run %s: could not write its last log lines yet", run.id)
        outcome: Outcome | None
        try:
            outcome = self._outcome(exe, kind, payload, retry=retry)
        except Exception as exc:
            log.exception("run %s: could not build the outcome of its attempt", run.id)
            outcome = finish_outcome(
                run.id,
                run.token,
                "failed",
                error=f"OutcomeNotStored: {describe_error(exc)}",
                traceback=format_traceback(exc),
            )
        if outcome is None:
            self._release(exe)
        else:
            self._outcomes.submit(exe, outcome)

    def _outcome(self, exe: Execution, kind: str, payload: Any, *, retry: bool) -> Outcome | None:
        run = exe.claimed
        if kind == "ok":
            try:
                result = serialization.dumps(
                    payload,
                    what=f"result of flow {run.flow!r}",
                    limit=self.settings.max_payload_bytes,
                )
            except Exception as exc:  # not JSON, or over the size limit: the attempt fails
                return self._error_outcome(exe, exc, retry=retry)
            return finish_outcome(run.id, run.token, "succeeded", result=result)
        if kind == "ok_json":  # a child process's result, already JSON
            return finish_outcome(run.id, run.token, "succeeded", result=payload)
        if kind == "child_error":
            return self._child_error_outcome(exe, payload)
        if kind == "suspend":
            return suspend_outcome(run.id, run.token, payload.wake_ms)
        if kind == "cancelled":
            return finish_outcome(run.id, run.token, "cancelled", error="cancelled on request")
        if kind == "error":
            return self._error_outcome(exe, payload, retry=retry)
        if kind == "handback":
            log.warning("handing back run %s: its attempt was interrupted (not counted)", run.id)
            return hand_back_outcome(run.id, run.token)
        log.warning("gave up run %s: its lease is lost (another worker owns it now)", run.id)
        return None

    def _error_outcome(self, exe: Execution, exc: BaseException, *, retry: bool = True) -> Outcome:
        ctx, run = exe.ctx, exe.claimed
        failed_step = ctx.failed_step if exc is ctx.failed_exc else None
        error, tb = describe_error(exc), format_traceback(exc)
        policy = exe.flow.retry if exe.flow is not None else None
        if retry and policy is not None and policy.should_retry(exc, run.attempt):
            delay_ms = int(policy.delay_for(run.attempt) * 1000)
            return retry_outcome(
                run.id, run.token, delay_ms, error=error, traceback=tb, failed_step=failed_step
            )
        return finish_outcome(
            run.id, run.token, "failed", error=error, traceback=tb, failed_step=failed_step
        )

    def _child_error_outcome(self, exe: Execution, answer: dict[str, Any]) -> Outcome:
        """The outcome of an attempt that raised in a child process (it applied the retry
        rule, :meth:`~legato.retry.RetryPolicy.should_retry`, to its exception)."""
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

    def _abandon_code(self, exe: Execution, *, interrupt: bool = False) -> None:
        """Stop a run's code from doing more: fence it, cancel its task, replace its thread."""
        if interrupt:
            exe.ctx.interrupt()
        exe.ctx.mark_lost()
        exe.ctx.cancel_requested.set()
        if exe.task is not None and self._async is not None:
            self._async.call_soon(exe.task.cancel)
        elif exe.thread_id is not None and self._threads is not None:
            self._threads.retire(exe.thread_id)
        self._finished_executing(exe)

    def _release(self, exe: Execution) -> None:
        with self._active_lock:
            self._active.pop(exe.claimed.id, None)
        took = time.monotonic() - exe.claimed_at
        self._run_seconds += (took - self._run_seconds) * 0.2
        if exe.claimed.id in self._gated_ids:
            self._gated_ids.discard(exe.claimed.id)
            self._gated_freed.set()
        self._slot_freed.set()

    # -- heartbeat and maintenance ---------------------------------------------------------

    def beat_once(self) -> None:
        """Extend the leases of the runs held here, record which are executing, apply cancel
        requests, give up runs whose lease was lost, hand back orphans."""
        began = time.monotonic()
        with self._claim_lock:
            with self._active_lock:
                held = list(self._active.values())
            executing = [e.claimed.id for e in held if e.marked]
            answer = self.store.heartbeat(
                self.id, self.lease_ms, [e.claimed.id for e in held], executing
            )
        self.health.beat(began)
        for exe in held:
            row = answer.owned.get(exe.claimed.id)
            if row is None or row["lease_token"] != exe.claimed.token:
                if exe.take_outcome():
                    log.warning(
                        "gave up run %s: its lease is lost (another worker owns it now)",
                        exe.claimed.id,
                    )
                    self._abandon_code(exe)
                    self._release(exe)
            elif row["cancel_requested"] and not exe.ctx.cancel_requested.is_set():
                exe.ctx.cancel_requested.set()
                if exe.task is not None and self._async is not None:
                    self._async.call_soon(exe.task.cancel)
        for row in answer.handed_back:
            log.warning(
                "handed back run %s: the database gave it to this worker, which was not "
                "running it (a claim whose answer was lost in a fault)",
                row["id"],
            )

    def maintain_once(self) -> None:
        """Requeue runs whose lease expired anywhere, fail poison runs, prune rate starts.

        After a database fault it waits until this worker extended its own leases again, and
        one heartbeat interval more (see :class:`~legato.heartbeat.Health`).
        """
        if not self.health.may_recover(self.settings.heartbeat_seconds):
            return
        recovery = self.store.recover_expired(self._max_recoveries)
        if recovery.requeued:
            log.warning(
                "requeued %d run(s) whose worker stopped heartbeating", len(recovery.requeued)
            )
        for run_id in recovery.cancelled:
            log.info("run %s cancelled as requested: its worker stopped heartbeating", run_id)
        for row in recovery.poisoned:
            log.error("run %s failed as poison: %s", row["id"], row["error"])
        if time.monotonic() - self._pruned_at > RATE_PRUNE_SECONDS:
            self._pruned_at = time.monotonic()
            self.store.prune_rate_starts()

    # -- shutdown ------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self.scheduler.stop()
        deadline = time.monotonic() + self.settings.grace_seconds
        while self._active and not self._force.is_set() and time.monotonic() < deadline:
            self._slot_freed.clear()
            self._slot_freed.wait(0.05)
        with self._active_lock:
            remaining = list(self._active.values())
        for exe in remaining:
            if exe.take_outcome():
                log.warning("handing back run %s: the worker is stopping", exe.claimed.id)
                self._abandon_code(exe, interrupt=True)
        self._outcomes.stop(grace=max(0.0, deadline - time.monotonic()) + 1)
        self._hand_back_all()
        for loop in self._loops:
            loop.stop()
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

    def _hand_back_all(self) -> None:
        """Hand back every run the worker still owns (a few tries across a fault)."""
        for attempt in range(5):
            try:
                handed = self.store.hand_back_all(self.id)
            except Exception as exc:
                if attempt == 4 or not self.store.is_transient(exc):
                    log.error(
                        "could not hand back runs (%s); their leases will expire and other "
                        "workers resume them",
                        exc,
                    )
                    return
                time.sleep(self.settings.backoff(attempt))
                continue
            if handed:
                log.warning("handed back %d running run(s); they resume on another worker", handed)
            return
