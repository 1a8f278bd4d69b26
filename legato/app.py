"""The public Python API: :class:`App`, flows, steps and run handles."""

from __future__ import annotations

import functools
import inspect
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import schedules as schedules_module
from . import serialization
from .config import Settings
from .config import database_url as resolve_database_url
from .context import current_run
from .errors import ConfigurationError, RunCancelled, RunFailed, UnknownFlow, UnknownRun
from .limits import FlowControl, KeySpec, RateLimit, limit_keys_for
from .retry import RetryPolicy
from .store import FlowRecord, NewRun, Store, open_store
from .store.records import TERMINAL
from .timeutil import as_seconds, to_ms

P = ParamSpec("P")
R = TypeVar("R")


def new_run_id() -> str:
    """A time-ordered id: 12 hex digits of epoch milliseconds, then 20 random hex digits."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


class App:
    """A registry of flows and steps bound to one database.

    The database is ``database_url`` if given, else ``$LEGATO_DATABASE_URL``, else
    ``sqlite:///legato.db``. The connection opens lazily on first use.
    """

    def __init__(
        self, database_url: str | None = None, *, settings: Settings | None = None
    ) -> None:
        self.database_url = resolve_database_url(database_url)
        self.settings = settings or Settings.from_env()
        self.flows: dict[str, Flow[Any, Any]] = {}
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._registered = False

    # -- decorators ----------------------------------------------------------------------

    @overload
    def flow(self, fn: Callable[P, R], /) -> Flow[P, R]: ...

    @overload
    def flow(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        version: str | None = None,
        queue: str = "default",
        retries: int | RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        priority: int = 0,
        schedule: Any = None,
        concurrency: int | None = None,
        concurrency_key: KeySpec = None,
        limits: Sequence[str] = (),
        rate_limit: str | tuple[int, float] | RateLimit | None = None,
        rate_limit_key: KeySpec = None,
        isolation: str = "thread",
        memory_limit: int | None = None,
        max_recoveries: int | None = None,
        on_event: str | list[str] | None = None,
        event_filter: dict[str, Any] | None = None,
    ) -> Callable[[Callable[P, R]], Flow[P, R]]: ...

    def flow(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Register a function (sync or ``async``) as a flow. Works bare or with options."""

        def register(func: Callable[..., Any]) -> Flow[Any, Any]:
            flow = Flow(self, func, **options)
            if flow.name in self.flows:
                raise ConfigurationError(f"a flow named {flow.name!r} is already registered")
            self.flows[flow.name] = flow
            self._registered = False
            return flow

        return register(fn) if fn is not None else register

    @overload
    def step(self, fn: Callable[P, R], /) -> Step[P, R]: ...

    @overload
    def step(
        self,
        *,
        name: str | None = None,
        retries: int | RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
    ) -> Callable[[Callable[P, R]], Step[P, R]]: ...

    def step(self, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Declare a checkpointed step. Works bare or with options."""

        def make(func: Callable[..., Any]) -> Step[Any, Any]:
            return Step(func, **options)

        return make(fn) if fn is not None else make

    # -- store -----------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The open store (opened, and migrated, on first use)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self.database_url, settings=self.settings)
        return self._store

    def use_store(self, store: Store) -> None:
        """Share an already open store (used by the worker and tests)."""
        self._store = store

    def register(self) -> None:
        """Record every flow and its schedules in the database (done by workers at start)."""
        store = self.store
        store.upsert_flows([f.record() for f in self.flows.values()])
        set_rows: list[dict[str, Any]] = []
        clear: list[str] = []
        for flow in self.flows.values():
            rows, cleared = flow.control.limit_rows()
            set_rows.extend(rows)
            clear.extend(cleared)
        store.sync_flow_limits(set_rows, clear)
        now = store.now_ms()
        for flow in self.flows.values():
            store.sync_schedules(
                flow.name,
                [
                    (f"{flow.name}:{s.key()}", json.dumps(s.to_json()), s.next_fire(now))
                    for s in flow.schedules
                ],
            )
        self._registered = True

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- runs ------------------------------------------------------------------------------

    def emit(
        self,
        event: str,
        payload: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> list[RunHandle]:
        """Emit an event: one run per flow subscribed to it (whose filter matches).

        With an idempotency key, emitting the same event again starts nothing new.
        """
        from .client import Client

        runs = Client(self.store, self.settings).emit(
            event, payload, idempotency_key=idempotency_key
        )
        return [RunHandle(self, r["id"]) for r in runs]

    def get_run(self, run_id: str) -> RunHandle:
        """A handle on an existing run."""
        if self.store.get_run(run_id) is None:
            raise UnknownRun(f"no run with id {run_id!r}")
        return RunHandle(self, run_id)

    def submit(self, flow: str, params: dict[str, Any] | None = None, **options: Any) -> RunHandle:
        """Submit a run of a flow by name (the flow may be defined in another process)."""
        local = self.flows.get(flow)
        if local is not None:
            return local.with_options(**options).submit(**(params or {}))
        record = self.store.get_flow(flow)
        if record is None:
            raise UnknownFlow(f"unknown flow {flow!r}")
        return _submit(self, record, params or {}, SubmitOptions(**options))


@dataclass(frozen=True)
class SubmitOptions:
    """Options of one submission (see :meth:`Flow.with_options`)."""

    delay: float | timedelta | None = None
    at: datetime | None = None
    queue: str | None = None
    priority: int | None = None
    idempotency_key: str | None = None
    trigger: str | None = None
    parent_id: str | None = None
    retry_of: str | None = None


def _submit(app: App, flow: FlowRecord, params: dict[str, Any], opts: SubmitOptions) -> RunHandle:
    encoded = serialization.dumps(
        params, what=f"parameters of flow {flow.name!r}", limit=app.settings.max_payload_bytes
    )
    parent = current_run.get()
    trigger = opts.trigger or "manual"
    parent_id = opts.parent_id
    key = opts.idempotency_key
    if parent is not None and opts.trigger is None:
        trigger, parent_id = "subflow", parent.run_id
        key = key or parent.next_child_key()
    delay = opts.delay.total_seconds() if isinstance(opts.delay, timedelta) else opts.delay
    local = app.flows.get(flow.name)
    limit_keys = limit_keys_for(
        flow.flow_control, params, local.control if local is not None else None
    )
    run = NewRun(
        id=new_run_id(),
        flow=flow.name,
        params=encoded,
        queue=opts.queue or flow.queue,
        max_attempts=flow.max_attempts,
        priority=flow.priority if opts.priority is None else opts.priority,
        trigger=trigger,
        parent_id=parent_id,
        retry_of=opts.retry_of,
        idempotency_key=key,
        at_ms=to_ms(opts.at) if opts.at is not None else None,
        delay_ms=int((delay or 0) * 1000),
        limit_keys=limit_keys,
    )
    if parent is None:
        row, _created = app.store.create_run(run)
    else:  # a child's key makes the submit safe to repeat across a database fault
        row, _created = parent.durably("submitting a child run", lambda: app.store.create_run(run))
    return RunHandle(app, row["id"])


class Flow(Generic[P, R]):
    """A registered flow. Call :meth:`submit` to run it durably on a worker."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        version: str | None = None,
        queue: str = "default",
        retries: int | RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        priority: int = 0,
        schedule: Any = None,
        concurrency: int | None = None,
        concurrency_key: KeySpec = None,
        limits: Sequence[str] = (),
        rate_limit: str | tuple[int, float] | RateLimit | None = None,
        rate_limit_key: KeySpec = None,
        isolation: str = "thread",
        memory_limit: int | None = None,
        max_recoveries: int | None = None,
        on_event: str | list[str] | None = None,
        event_filter: dict[str, Any] | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError("@app.flow must decorate a function")
        self.app = app
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description if description is not None else _first_line(fn.__doc__)
        self.version = version
        self.queue = queue
        self.retry = RetryPolicy.coerce(retries)
        self.timeout = as_seconds(timeout)
        self.priority = priority
        self.schedules = schedules_module.coerce(schedule)
        self.concurrency = concurrency
        self.control = FlowControl(
            flow=self.name,
            concurrency=concurrency,
            concurrency_key=concurrency_key,
            limits=tuple([limits] if isinstance(limits, str) else limits),
            rate_limit=RateLimit.coerce(rate_limit),
            rate_limit_key=rate_limit_key,
            isolation=isolation,
            memory_limit_mb=memory_limit,
            max_recoveries=max_recoveries,
        )
        self.on_event = [on_event] if isinstance(on_event, str) else list(on_event or [])
        self.event_filter = dict(event_filter or {})
        if self.event_filter and not self.on_event:
            raise ConfigurationError("event_filter needs on_event")
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self.hints = serialization.type_hints(fn)
        self._record: FlowRecord | None = None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function directly, in this process (steps run without checkpoints)."""
        return self.fn(*args, **kwargs)

    def record(self) -> FlowRecord:
        """The flow as stored in the database (built once: a flow's options do not change)."""
        if self._record is None:
            self._record = self._build_record()
        return self._record

    def _build_record(self) -> FlowRecord:
        return FlowRecord(
            name=self.name,
            queue=self.queue,
            description=self.description,
            version=self.version,
            priority=self.priority,
            max_attempts=self.retry.attempts,
            timeout_s=self.timeout,
            retry_policy=json.dumps(self.retry.describe()),
            schedules=json.dumps([s.describe() for s in self.schedules]),
            parameters=json.dumps(_describe_parameters(self.signature, self.hints)),
            on_event=json.dumps(self.on_event) if self.on_event else None,
            event_filter=json.dumps(self.event_filter) if self.event_filter else None,
            is_async=self.is_async,
            flow_control=json.dumps(control) if (control := self.control.describe()) else None,
            max_recoveries=self.control.max_recoveries,
        )

    def bind_params(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Map call arguments to named parameters, refusing ones the function does not take."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"flow {self.name!r}: {exc}") from None
        return dict(bound.arguments)

    def decode_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Turn stored JSON parameters back into the annotated types (dataclasses, models)."""
        return {k: serialization.revive(v, self.hints.get(k)) for k, v in params.items()}

    def with_options(self, **options: Any) -> BoundFlow[P, R]:
        """Submission options: ``delay``, ``at``, ``queue``, ``priority``, ``idempotency_key``."""
        return BoundFlow(self, SubmitOptions(**options))

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle:
        """Enqueue a run with these parameters and return its handle."""
        return BoundFlow(self, SubmitOptions()).submit(*args, **kwargs)


class BoundFlow(Generic[P, R]):
    """A flow with submission options, from :meth:`Flow.with_options`."""

    def __init__(self, flow: Flow[P, R], options: SubmitOptions) -> None:
        self.flow = flow
        self.options = options

    def with_options(self, **options: Any) -> BoundFlow[P, R]:
        return BoundFlow(self.flow, replace(self.options, **options))

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle:
        app = self.flow.app
        params = self.flow.bind_params(args, kwargs)
        if not app._registered:
            app.register()
        return _submit(app, self.flow.record(), params, self.options)


class Step(Generic[P, R]):
    """A checkpointed function. Inside a run, each call is recorded and replayed on recovery;
    outside a run it is a plain call."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retries: int | RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        self.retry = RetryPolicy.coerce(retries)
        self.timeout = as_seconds(timeout)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.return_type = serialization.type_hints(fn).get("return")
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = current_run.get()
        if ctx is None:
            return self.fn(*args, **kwargs)
        if self.is_async:
            return ctx.run_step_async(self, args, kwargs)  # type: ignore[return-value]
        result: R = ctx.run_step(self, args, kwargs)
        return result


class RunHandle:
    """A handle on a run: its id, status, result and cancellation."""

    def __init__(self, app: App, run_id: str) -> None:
        self.app = app
        self.id = run_id

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r})"

    def info(self) -> dict[str, Any]:
        """The run as stored (the JSON shape of ``legato runs show --json``, with steps)."""
        from .serializers import run_json

        row = self.app.store.get_run(self.id)
        if row is None:
            raise UnknownRun(f"no run with id {self.id!r}")
        return run_json(row, self.app.store.get_steps(self.id))

    def status(self) -> str:
        status = self.app.store.get_run_status(self.id)
        if status is None:
            raise UnknownRun(f"no run with id {self.id!r}")
        return status

    def cancel(self) -> str:
        """Cancel the run: at once if waiting, at its next step boundary if running."""
        status = self.app.store.cancel_run(self.id)
        if status is None:
            raise UnknownRun(f"no run with id {self.id!r}")
        return status

    def wait(self, timeout: float | None = None) -> str:
        """Block until the run ends; return its terminal status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            status = self.status()
            if status in TERMINAL:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.id} still {status} after {timeout}s")
            time.sleep(
                pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
            )
            pause = min(pause * 1.5, 0.25)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run and return its result; raise :class:`RunFailed` or
        :class:`RunCancelled` if it did not succeed."""
        status = self.wait(timeout)
        row = self.app.store.get_run(self.id)
        assert row is not None
        if status == "succeeded":
            return serialization.loads(row["result"])
        if status == "cancelled":
            raise RunCancelled(self.id)
        raise RunFailed(self.id, row["error"], row["traceback"])


def _first_line(doc: str | None) -> str | None:
    if not doc:
        return None
    return doc.strip().splitlines()[0].strip() or None


def _describe_parameters(
    signature: inspect.Signature, hints: dict[str, Any]
) -> list[dict[str, Any]]:
    """The flow's parameters as stored, so that submissions can be checked without the code."""
    described = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            described.append({"name": param.name, "variadic": True})
            continue
        entry: dict[str, Any] = {"name": param.name, "required": param.default is param.empty}
        if param.default is not param.empty:
            try:
                entry["default"] = json.loads(serialization.dumps(param.default))
            except (TypeError, ValueError):
                entry["default"] = repr(param.default)
        hint = hints.get(param.name)
        if hint is not None:
            entry["annotation"] = getattr(hint, "__name__", None) or str(hint)
        described.append(entry)
    return described
