"""The store: the narrow interface between Legato and its database.

:class:`Store` holds every operation once, on top of four primitives that each backend
implements (:meth:`_read`, :meth:`_write`, :meth:`_write_many`, :meth:`_transaction`) and the
dialect fragments of :mod:`legato.store.queries`. State transitions are single fenced
statements; run events are recorded by database triggers, so no code path can forget them.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import DatabaseUnavailable
from . import queries as q
from .records import ClaimedRun, FlowRecord, LogLine, NewRun, RunFilter, StepRecord
from .url import DatabaseURL

Row = dict[str, Any]

#: Lease expiries a run survives before it is failed as poison (a flow may set its own).
DEFAULT_MAX_RECOVERIES = 5

_FILTER_COLUMNS = ("flow", "status", "queue", "trigger", "parent_id")
RUN_SORT_COLUMNS = ("created_at", "finished_at")


class Tx(ABC):
    """Statements run inside one transaction."""

    @abstractmethod
    def read(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]: ...

    @abstractmethod
    def write(self, sql: str, params: dict[str, Any] | None = None) -> int: ...

    @abstractmethod
    def write_many(self, sql: str, rows: Sequence[dict[str, Any]]) -> None: ...


class Store(ABC):
    """Persistence of flows, runs, steps, logs and workers."""

    dialect: q.Dialect
    name: str  # "sqlite" | "postgresql"
    url: DatabaseURL

    def __init__(self, settings: Settings | None = None) -> None:
        self._sql: dict[str, str] = {}
        self.settings = settings or Settings.from_env()

    # -- faults --------------------------------------------------------------------------

    @abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """Whether a driver error is a fault of the connection or the server (cut, restart,
        timeout, lock wait), as opposed to a bad statement or bad data."""

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        """The :class:`DatabaseUnavailable` that stands for the driver error ``exc``."""
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        error = DatabaseUnavailable(
            f"database {self.url.redacted()} unavailable: {reason}", url=self.url.raw
        )
        error.__cause__ = exc
        return error

    # -- primitives each backend provides ------------------------------------------------

    @abstractmethod
    def _read(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        """Run a query and return its rows."""

    @abstractmethod
    def _write(self, sql: str, params: dict[str, Any] | None = None) -> int:
        """Run one write statement in its own transaction; return the affected row count."""

    @abstractmethod
    def _write_returning(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        """Run one write statement with ``RETURNING`` in its own transaction."""

    @abstractmethod
    def _write_many(self, sql: str, rows: Sequence[dict[str, Any]]) -> None:
        """Run one write statement for many parameter sets in one transaction."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Tx]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite)."""

    @abstractmethod
    def migrate(self) -> None:
        """Bring the schema to the newest version (idempotent, safe to race)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def listen(self, timeout: float) -> Iterator[str]:  # pragma: no cover - overridden by PG
        """Wait up to ``timeout`` seconds for a wake-up; yields channel payloads (queues)."""
        return iter(())

    @abstractmethod
    def _claim_sql(self, queue_count: int) -> str:
        """The CLAIM statement for a worker serving ``queue_count`` queues."""

    @abstractmethod
    def _claim_params(self, queues: Sequence[str]) -> dict[str, Any]:
        """The parameters naming the worker's queues in :meth:`_claim_sql`."""

    # -- SQL text cache ------------------------------------------------------------------

    def sql(self, name: str, **fragments: str) -> str:
        key = name + "|" + "|".join(f"{k}={v}" for k, v in sorted(fragments.items()))
        text = self._sql.get(key)
        if text is None:
            text = self._sql[key] = q.render(getattr(q, name), self.dialect, **fragments)
        return text

    # -- clock ---------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The database clock, in epoch milliseconds."""
        return int(self._read(self.sql("NOW"))[0]["now"])

    # -- flows ---------------------------------------------------------------------------

    def upsert_flows(self, flows: Sequence[FlowRecord]) -> None:
        rows = [
            {
                "name": f.name,
                "description": f.description,
                "version": f.version,
                "queue": f.queue,
                "priority": f.priority,
                "max_attempts": f.max_attempts,
                "timeout_s": f.timeout_s,
                "retry_policy": f.retry_policy,
                "schedules": f.schedules,
                "parameters": f.parameters,
                "on_event": f.on_event,
                "event_filter": f.event_filter,
                "is_async": int(f.is_async),
                "flow_control": f.flow_control,
                "max_recoveries": f.max_recoveries,
            }
            for f in flows
        ]
        if rows:
            self._write_many(self.sql("UPSERT_FLOW"), rows)

    def get_flow(self, name: str) -> FlowRecord | None:
        rows = self._read(self.sql("GET_FLOW"), {"name": name})
        return _flow(rows[0]) if rows else None

    def list_flows(self) -> list[FlowRecord]:
        return [_flow(r) for r in self._read(self.sql("LIST_FLOWS"))]

    def subscribed_flows(self) -> list[FlowRecord]:
        """Flows that subscribe to at least one event."""
        return [_flow(r) for r in self._read(self.sql("SUBSCRIBED_FLOWS"))]

    def last_run_of_flow(self, flow: str) -> Row | None:
        rows = self._read(self.sql("LAST_RUN_OF_FLOW"), {"flow": flow})
        return rows[0] if rows else None

    # -- runs: creating and reading --------------------------------------------------------

    def create_run(self, run: NewRun) -> tuple[Row, bool]:
        """Insert a run. With an idempotency key already used, return that run instead.

        Returns ``(run_row, created)``.
        """
        params = run.as_params()
        try:
            rows = self._write_returning(self.sql("INSERT_RUN"), params)
        except DatabaseUnavailable as exc:
            if exc.__cause__ is None:  # no connection could be had: nothing was sent
                raise
            # The connection broke with the INSERT in flight: it may have been applied. The
            # run's id tells: look for it, and insert it only if it is not there.
            existing = self._read(self.sql("GET_RUN"), {"id": run.id})
            if existing:
                return existing[0], True
            rows = self._write_returning(self.sql("INSERT_RUN"), params)
        if rows:
            return rows[0], True
        existing = self._read(self.sql("GET_RUN_BY_KEY"), {"key": run.idempotency_key})
        if not existing:  # pragma: no cover - the conflicting row was deleted meanwhile
            raise RuntimeError("idempotency key conflict but no run found")
        return existing[0], False

    def create_runs(self, runs: Sequence[NewRun]) -> None:
        """Insert many runs in one transaction (runs with a used idempotency key are skipped)."""
        if runs:
            with self._transaction() as tx:
                self._insert_runs(tx, runs)

    def _insert_runs(self, tx: Tx, runs: Sequence[NewRun]) -> None:
        """Insert runs inside ``tx`` (a used idempotency key skips its run)."""
        if runs:
            tx.write_many(self.sql("INSERT_RUN_QUIETLY"), [r.as_params() for r in runs])

    def _advance_schedules(self, tx: Tx, advances: Sequence[dict[str, Any]]) -> None:
        """Compare-and-set the next fire times of several schedules inside ``tx``."""
        if advances:
            tx.write_many(self.sql("ADVANCE_SCHEDULE"), advances)

    def get_run(self, run_id: str) -> Row | None:
        rows = self._read(self.sql("GET_RUN"), {"id": run_id})
        return rows[0] if rows else None

    def resolve_run_id(self, prefix: str) -> str | None:
        """The full id of the single run whose id starts with ``prefix``, if exactly one."""
        if not prefix or any(c in prefix for c in "%_\\"):
            return None
        rows = self._read(self.sql("FIND_RUN_BY_PREFIX"), {"prefix": prefix + "%"})
        return rows[0]["id"] if len(rows) == 1 else None

    def get_run_status(self, run_id: str) -> str | None:
        rows = self._read(self.sql("GET_RUN_STATUS"), {"id": run_id})
        return rows[0]["status"] if rows else None

    def list_runs(self, f: RunFilter) -> list[Row]:
        clauses, params = _run_filter(f)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        sql = f"SELECT {q.RUN_COLUMNS} FROM runs {where} ORDER BY created_at DESC, id DESC LIMIT :limit"
        return self._read(q.render(sql, self.dialect), params)

    def get_steps(self, run_id: str) -> list[StepRecord]:
        rows = self._read(self.sql("GET_STEPS"), {"run_id": run_id})
        return [StepRecord(**r) for r in rows]

    def get_events(self, run_id: str) -> list[Row]:
        return self._read(self.sql("GET_EVENTS"), {"run_id": run_id})

    def get_logs(self, run_id: str, after_id: int = 0, limit: int = 1000) -> list[Row]:
        return self._read(
            self.sql("GET_LOGS"), {"run_id": run_id, "after": after_id, "limit": limit}
        )

    # -- runs: manual actions --------------------------------------------------------------

    def cancel_run(self, run_id: str) -> str | None:
        """Cancel a waiting run at once, or ask a running one to stop (one statement).

        Returns the status after the call (``cancelled``, ``running`` when a stop was
        requested, or the unchanged terminal status), ``None`` for an unknown id. The request
        of a running run is kept until its worker honours it: whatever the attempt does
        meanwhile (retry, sleep, hand-back, recovery), the run ends ``cancelled``.
        """
        rows = self._write_returning(self.sql("CANCEL_RUN"), {"id": run_id})
        if not rows:
            return self.get_run_status(run_id)
        status = str(rows[0]["status"])
        if status == "running":
            # The request is written; without the wake-up the worker's heartbeat sees it.
            with contextlib.suppress(DatabaseUnavailable):
                self._notify_cancel()
        return status

    def _notify_cancel(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Wake workers so a cancel request is seen before the next heartbeat (PG only)."""

    # -- worker side -------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_ms: int,
        *,
        executing: bool = False,
    ) -> list[ClaimedRun]:
        """Claim up to ``limit`` due runs of ``queues`` under a lease of ``lease_ms``.

        ``executing``: the worker starts them at once (the poison evidence, see
        :data:`~legato.store.queries.FAIL_POISONED`); runs claimed ahead of a free slot are not.
        """
        rows = self._write_returning(
            self._claim_sql(len(queues)),
            {
                "worker_id": worker_id,
                "limit": limit,
                "lease_ms": lease_ms,
                "executing": int(executing),
                **self._claim_params(queues),
            },
        )
        if len(rows) > 1:  # started in claim order
            rows.sort(key=lambda r: (r["claim_at"], r["seq"]))
        return [_claimed(r) for r in rows]

    def claim_gated(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        lease_ms: int,
        *,
        executing: bool = False,
    ) -> list[ClaimedRun]:
        """Claim runs that are subject to limits or in limited queues (see :mod:`.gate`)."""
        from .gate import claim_gated

        rows = claim_gated(self, worker_id, queues, limit, lease_ms, executing)
        rows.sort(key=lambda r: (r["claim_at"], r["seq"]))
        return [_claimed(r) for r in rows]

    def _gated_transaction(self) -> AbstractContextManager[Tx]:
        """A write transaction serialised with every other gated claim (SQLite's writers
        already are; PostgreSQL takes an advisory lock)."""
        return self._transaction()

    def requeue_expired(self, max_recoveries: int = DEFAULT_MAX_RECOVERIES) -> int:
        """Put runs whose lease expired back in their queue, to resume elsewhere.

        A run whose worker died under it more than ``max_recoveries`` times while it was
        executing (the flow's own setting first) is poison: it ends ``failed`` instead.
        Returns how many runs were requeued.
        """
        return len(self.recover_expired(max_recoveries).requeued)

    def recover_expired(self, max_recoveries: int = DEFAULT_MAX_RECOVERIES) -> Recovery:
        """Fail poison runs, cancel expired runs whose cancel was requested, requeue the
        other expired ones. Rows locked by another session are skipped, not waited for."""
        with self._transaction() as tx:
            poisoned = tx.read(self.sql("FAIL_POISONED"), {"max_recoveries": max_recoveries})
            for row in poisoned:
                tx.write(
                    self.sql("CLOSE_RUNNING_STEPS"), {"run_id": row["id"], "error": row["error"]}
                )
            rows = tx.read(self.sql("REQUEUE_EXPIRED"))
            cancelled = [r["id"] for r in rows if r["status"] == "cancelled"]
            self._close_cancelled_steps(tx, cancelled)
        return Recovery(
            requeued=[r["id"] for r in rows if r["status"] != "cancelled"],
            poisoned=poisoned,
            cancelled=cancelled,
        )

    def _close_cancelled_steps(self, tx: Tx, run_ids: Sequence[str]) -> None:
        """Steps still running in runs that just ended ``cancelled`` end with them."""
        for run_id in run_ids:
            tx.write(self.sql("CLOSE_RUNNING_STEPS"), {"run_id": run_id, "error": "cancelled"})

    # -- flow control: queues and limits -----------------------------------------------------

    def queue_settings(self) -> list[Row]:
        """Queues with settings: ``name, paused, strict, concurrency``."""
        return self._read(self.sql("QUEUE_SETTINGS"))

    def set_queue(self, name: str, *, paused: bool, strict: bool, concurrency: int | None) -> None:
        params = {
            "name": name,
            "paused": int(paused),
            "strict": int(strict),
            "concurrency": concurrency,
        }
        if not paused and not strict and concurrency is None:
            self._write(self.sql("DELETE_QUEUE"), {"name": name})
        else:
            self._write(self.sql("UPSERT_QUEUE"), params)

    def list_limits(self) -> list[Row]:
        return self._read(self.sql("LIST_LIMITS"))

    def set_limit(
        self,
        name: str,
        *,
        kind: str = "named",
        concurrency: int | None = None,
        rate: int | None = None,
        period_ms: int | None = None,
    ) -> None:
        self._write(
            self.sql("UPSERT_LIMIT"),
            {
                "name": name,
                "kind": kind,
                "concurrency": concurrency,
                "rate": rate,
                "period_ms": period_ms,
            },
        )

    def sync_flow_limits(self, set_rows: Sequence[dict[str, Any]], clear: Sequence[str]) -> None:
        """Store the limits flows declare (``name, concurrency, rate, period_ms``) and clear
        the flow limits named in ``clear`` (a flow that no longer declares them)."""
        if not set_rows and not clear:
            return
        with self._transaction() as tx:
            if set_rows:
                tx.write_many(
                    self.sql("UPSERT_LIMIT"), [{"kind": "flow", **row} for row in set_rows]
                )
            if clear:
                tx.write_many(self.sql("CLEAR_FLOW_LIMIT"), [{"name": n} for n in clear])

    def delete_limit(self, name: str) -> bool:
        return bool(self._write(self.sql("DELETE_LIMIT"), {"name": name}))

    def running_with_limits(self) -> list[Row]:
        """Running runs that hold limits: ``id, queue, limit_keys, started_at``."""
        return self._read(self.sql("RUNNING_WITH_LIMITS"))

    def running_in_queue(self, queue: str) -> list[str]:
        return [r["id"] for r in self._read(self.sql("RUNNING_IN_QUEUE"), {"queue": queue})]

    def rate_counts(self) -> list[Row]:
        """Starts within the period of each rate-limited key: ``name, key, n, first``."""
        return self._read(self.sql("RATE_COUNTS"))

    def runs_ahead(self, run_id: str, queue: str) -> int:
        """How many due, waiting runs of ``queue`` come before ``run_id`` in claim order."""
        rows = self._read(self.sql("RUN_SEQ"), {"id": run_id})
        if not rows:
            return 0
        params = {"queue": queue, "claim_key": rows[0]["claim_key"], "seq": rows[0]["seq"]}
        return int(self._read(self.sql("STRICT_AHEAD"), params)[0]["n"])

    def prune_rate_starts(self) -> int:
        """Forget starts older than their limit's period."""
        return self._write(self.sql("PRUNE_RATE_STARTS"))

    def heartbeat(
        self,
        worker_id: str,
        lease_ms: int,
        held: Collection[str],
        executing: Collection[str] = (),
    ) -> Heartbeat:
        """Extend the leases of the runs the worker holds (``held``), record which of them are
        ``executing``, and hand back runs the database gives the worker but it does not hold.

        ``owned`` has ``id``, ``lease_token`` and ``cancel_requested`` of each held run the
        worker still owns; a held run missing from it was lost to another worker.
        """
        params = {
            "worker_id": worker_id,
            "lease_ms": lease_ms,
            "running": len(held),
            "held": self.dialect.ids(held),
            "executing": self.dialect.ids(executing),
        }
        orphans, owned = self._beat(params)
        return Heartbeat(owned={r["id"]: r for r in owned}, handed_back=orphans)

    def _beat(self, params: dict[str, Any]) -> tuple[list[Row], list[Row]]:
        """The heartbeat's writes: ``(orphans handed back, held runs still owned)``."""
        lists = self._id_lists("held", "executing")
        with self._transaction() as tx:
            orphans = tx.read(self.sql("HAND_BACK_ORPHANS", **lists), params)
            owned = tx.read(self.sql("HEARTBEAT_RUNS", **lists), params)
            tx.write(
                self.sql("WORKER_HEARTBEAT"),
                {"id": params["worker_id"], "running": params["running"]},
            )
            self._close_cancelled_steps(
                tx, [r["id"] for r in orphans if r["status"] == "cancelled"]
            )
        return orphans, owned

    def _id_lists(self, *names: str) -> dict[str, str]:
        """The ``{name}`` fragments of list parameters (see :meth:`Dialect.id_list`)."""
        return {name: self.dialect.id_list(name) for name in names}

    def mark_executing(self, run_id: str, token: int, executing: bool = True) -> bool:
        """Record that a run's code starts (or stopped) running in its worker (fenced)."""
        params = {"run_id": run_id, "token": token, "executing": int(executing)}
        return bool(self._write(self.sql("MARK_EXECUTING"), params))

    def finish_run(
        self,
        run_id: str,
        token: int,
        status: str,
        *,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        failed_step: str | None = None,
    ) -> bool:
        """End a run (fenced). False means the lease was lost and nothing was written."""
        outcome = finish_outcome(
            run_id,
            token,
            status,
            result=result,
            error=error,
            traceback=traceback,
            failed_step=failed_step,
        )
        return self.write_outcomes([outcome])[0]

    def retry_later(
        self,
        run_id: str,
        token: int,
        delay_ms: int,
        *,
        error: str,
        traceback: str,
        failed_step: str | None,
    ) -> bool:
        """Put a failed attempt back to wait ``delay_ms`` for its next attempt (fenced)."""
        outcome = retry_outcome(
            run_id, token, delay_ms, error=error, traceback=traceback, failed_step=failed_step
        )
        return self.write_outcomes([outcome])[0]

    def suspend(self, run_id: str, token: int, wake_ms: int) -> bool:
        """Release a run's slot until ``wake_ms``; it resumes (same attempt) when due (fenced)."""
        return self.write_outcomes([suspend_outcome(run_id, token, wake_ms)])[0]

    def write_outcomes(self, outcomes: Sequence[Outcome], *, wake: bool = False) -> list[bool]:
        """Write several attempts' outcomes in one transaction (group commit).

        Each is fenced on its own: the answer says, per outcome, whether it was written.
        ``wake``: a run that held a limit ended, so wake workers waiting for its slot.
        """
        with self._transaction() as tx:
            written = self._write_outcomes(tx, outcomes)
            if wake:
                self._notify_slot_freed(tx)
            return written

    def _notify_slot_freed(self, tx: Tx) -> None:  # noqa: B027 - SQLite wakes on any commit
        """Wake idle workers: a limit's slot is free (PostgreSQL sends a NOTIFY)."""

    def _write_outcomes(self, tx: Tx, outcomes: Sequence[Outcome]) -> list[bool]:
        return [self._write_outcome(tx, name, params) for name, params in outcomes]

    def _write_outcome(self, tx: Tx, name: str, params: dict[str, Any]) -> bool:
        """One fenced outcome inside ``tx``; False when the lease was lost."""
        if name in RETURNS_STATUS:
            rows = tx.read(self.sql(name), params)
            if rows and rows[0]["status"] == "cancelled":
                self._close_cancelled_steps(tx, [params["run_id"]])
            return bool(rows)
        if tx.write(self.sql(name), params) <= 0:
            return False
        self._after_outcome(tx, name, params)
        return True

    def _after_outcome(self, tx: Tx, name: str, params: dict[str, Any]) -> None:
        if name == "FINISH_RUN" and params["status"] != "succeeded":
            # Steps interrupted by the end of the run (timeout, cancel) end with it.
            tx.write(
                self.sql("CLOSE_RUNNING_STEPS"),
                {"run_id": params["run_id"], "error": params["error"]},
            )

    def outcome_applied(self, outcome: Outcome) -> bool:
        """After a fault, whether ``outcome`` (refused when written again) had in fact been
        written before the connection broke: the run is past ``running`` under the token."""
        name, params = outcome
        row = self.get_run(params["run_id"])
        if row is None or row["status"] == "running":
            return False
        token = row["lease_token"] - (1 if name == "HAND_BACK" else 0)
        return bool(token == params["token"])

    def hand_back(self, run_id: str, token: int) -> bool:
        """Return a run to its queue to be resumed by any worker (fenced); a run whose cancel
        was requested ends ``cancelled`` instead."""
        with self._transaction() as tx:
            return self._write_outcome(tx, *hand_back_outcome(run_id, token))

    def hand_back_all(self, worker_id: str) -> int:
        """Hand back every run the worker owns; returns how many."""
        with self._transaction() as tx:
            rows = tx.read(self.sql("HAND_BACK_ALL"), {"worker_id": worker_id})
            self._close_cancelled_steps(tx, [r["id"] for r in rows if r["status"] == "cancelled"])
        return len(rows)

    def step_started(
        self, run_id: str, token: int, position: int, name: str, run_attempt: int
    ) -> bool:
        return bool(
            self._write(
                self.sql("STEP_START"),
                {
                    "run_id": run_id,
                    "token": token,
                    "position": position,
                    "name": name,
                    "run_attempt": run_attempt,
                },
            )
        )

    def step_finished(
        self,
        run_id: str,
        token: int,
        position: int,
        status: str,
        *,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        return bool(
            self._write(
                self.sql("STEP_FINISH"),
                {
                    "run_id": run_id,
                    "token": token,
                    "position": position,
                    "status": status,
                    "result": result,
                    "error": error,
                    "traceback": traceback,
                },
            )
        )

    def record_step_result(self, run_id: str, token: int, position: int, result: str) -> bool:
        """Store a running step's intermediate result (a durable sleep's wake time)."""
        return bool(
            self._write(
                self.sql("STEP_RESULT"),
                {"run_id": run_id, "token": token, "position": position, "result": result},
            )
        )

    def write_logs(self, lines: Sequence[LogLine]) -> None:
        """Insert captured lines; lines of runs whose lease was lost are dropped (fenced)."""
        if lines:
            self._write_many(
                self.sql("INSERT_LOG"),
                [
                    {
                        "run_id": ln.run_id,
                        "token": ln.token,
                        "ts": ln.ts,
                        "level": ln.level,
                        "step": ln.step,
                        "attempt": ln.attempt,
                        "message": ln.message,
                    }
                    for ln in lines
                ],
            )

    # -- schedules ---------------------------------------------------------------------------

    def sync_schedules(self, flow: str, schedules: Sequence[tuple[str, str, int | None]]) -> None:
        """Make ``flow``'s stored schedules exactly ``(id, definition, next_fire_at)``.

        An existing schedule keeps its next fire time unless its definition changed.
        """
        with self._transaction() as tx:
            keep = {sid for sid, _, _ in schedules}
            for row in tx.read(self.sql("SCHEDULE_IDS_OF_FLOW"), {"flow": flow}):
                if row["id"] not in keep:
                    tx.write(self.sql("DELETE_SCHEDULE"), {"id": row["id"]})
            for sid, definition, next_fire in schedules:
                tx.write(
                    self.sql("UPSERT_SCHEDULE"),
                    {"id": sid, "flow": flow, "definition": definition, "next_fire_at": next_fire},
                )

    def due_schedules(self, now_ms: int, limit: int = 500) -> list[Row]:
        return self._read(self.sql("DUE_SCHEDULES"), {"now": now_ms, "limit": limit})

    def fire_schedules(
        self,
        now_ms: int,
        limit: int,
        plan: Callable[[Tx, list[Row]], tuple[list[NewRun], list[dict[str, Any]]]],
    ) -> int:
        """Fire up to ``limit`` due schedules in one transaction.

        The due rows are locked (``SKIP LOCKED`` on PostgreSQL) so concurrent workers share
        the work instead of repeating it; ``plan`` turns them into runs to create and
        ``(id, old, next, last)`` advances. Returns how many schedules were due.
        """
        with self._transaction() as tx:
            rows = tx.read(self.sql("DUE_SCHEDULES_LOCKED"), {"now": now_ms, "limit": limit})
            if not rows:
                return 0
            runs, advances = plan(tx, rows)
            self._insert_runs(tx, runs)
            self._advance_schedules(tx, advances)
        return len(rows)

    def next_schedule_due(self) -> int | None:
        rows = self._read(self.sql("NEXT_SCHEDULE_DUE"))
        return rows[0]["next"] if rows else None

    def list_schedules(self) -> list[Row]:
        return self._read(self.sql("LIST_SCHEDULES"))

    def advance_schedule(self, schedule_id: str, old: int, new: int | None, last: int) -> bool:
        """Move a schedule's next fire time from ``old`` to ``new`` (compare-and-set)."""
        return bool(
            self._write(
                self.sql("ADVANCE_SCHEDULE"),
                {"id": schedule_id, "old": old, "next": new, "last": last},
            )
        )

    def schedule_active_runs(self, schedule_id: str, tx: Tx | None = None) -> list[str]:
        read = tx.read if tx is not None else self._read
        rows = read(self.sql("SCHEDULE_ACTIVE_RUNS"), {"schedule_id": schedule_id})
        return [r["status"] for r in rows]

    def set_schedules_paused(self, flow: str, paused: bool) -> bool:
        return bool(
            self._write(self.sql("SET_SCHEDULES_PAUSED"), {"name": flow, "paused": int(paused)})
        )

    # -- workers and queues ----------------------------------------------------------------

    def register_worker(
        self, worker_id: str, hostname: str, pid: int, queues: Sequence[str], concurrency: int
    ) -> None:
        self._write(
            self.sql("REGISTER_WORKER"),
            {
                "id": worker_id,
                "hostname": hostname,
                "pid": pid,
                "queues": json.dumps(list(queues)),
                "concurrency": concurrency,
            },
        )

    def worker_stopped(self, worker_id: str) -> None:
        self._write(self.sql("WORKER_STOPPED"), {"id": worker_id})

    def list_workers(self, dead_after_ms: int, forget_after_ms: int = 3_600_000) -> list[Row]:
        rows = self._read(
            self.sql("LIST_WORKERS"), {"dead_ms": dead_after_ms, "forget_ms": forget_after_ms}
        )
        for r in rows:
            r["queues"] = json.loads(r["queues"])
            r["alive"] = bool(r["alive"])
        return rows

    def queue_counts(self) -> list[Row]:
        return self._read(self.sql("QUEUE_COUNTS"))

    def stats(self, since_ms: int, until_ms: int, flow: str | None = None) -> list[Row]:
        """Counts by flow and status: finished in the window, plus what is active now."""
        flow_filter = "AND flow = :flow" if flow else ""
        params: dict[str, Any] = {"since": since_ms, "until": until_ms}
        if flow:
            params["flow"] = flow
        finished = self._read(
            self.sql("STATS_FINISHED", flow_filter=self._finished_flow_filter(flow)), params
        )
        active = self._read(
            self.sql("STATS_ACTIVE", flow_filter=flow_filter), {"flow": flow} if flow else {}
        )
        return finished + active

    # -- REST API: keyset pages, time series, metrics, readiness ---------------------------

    def list_runs_page(
        self,
        f: RunFilter,
        *,
        order: str = "created_at",
        descending: bool = True,
        after: tuple[int, str] | None = None,
    ) -> list[Row]:
        """Runs matching ``f`` sorted by ``(order, id)``, starting after the ``after`` key.

        Keyset pagination: ``after`` is the ``(order value, id)`` of the last run of the
        previous page. The first condition on ``order`` alone is what the indexes on
        ``created_at`` and ``finished_at`` serve; ties are broken by ``id``. Sorting by
        ``finished_at`` lists finished runs only.
        """
        if order not in RUN_SORT_COLUMNS:
            raise ValueError(f"cannot sort runs by {order!r}")
        clauses, params = _run_filter(f)
        if order == "finished_at":
            clauses.append("finished_at IS NOT NULL")
        if after is not None:
            cmp = "<" if descending else ">"
            clauses.append(
                f"{order} {cmp}= :after_value AND ({order} {cmp} :after_value OR id {cmp} :after_id)"
            )
            params["after_value"], params["after_id"] = after
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        direction = "DESC" if descending else "ASC"
        sql = (
            f"SELECT {q.RUN_COLUMNS} FROM runs {where} "
            f"ORDER BY {order} {direction}, id {direction} LIMIT :limit"
        )
        return self._read(q.render(sql, self.dialect), params)

    def stats_series(
        self, since_ms: int, until_ms: int, bucket_ms: int, flow: str | None = None
    ) -> list[Row]:
        """Runs finished in ``[since, until]`` counted per ``bucket_ms`` bucket and status."""
        params: dict[str, Any] = {"since": since_ms, "until": until_ms, "bucket": bucket_ms}
        if flow:
            params["flow"] = flow
        return self._read(
            self.sql("STATS_SERIES", flow_filter=self._finished_flow_filter(flow)), params
        )

    def _finished_flow_filter(self, flow: str | None) -> str:
        """The flow term of a query over a window of finished runs. SQLite would pick the
        ``(flow, created_at)`` index and read every run of the flow; ``+flow`` keeps it on the
        covering ``runs_finished`` index, which reads the window only."""
        if not flow:
            return ""
        return "AND +flow = :flow" if self.name == "sqlite" else "AND flow = :flow"

    def run_counts(self) -> list[Row]:
        """How many runs each flow has in each status (all time)."""
        return self._read(self.sql("RUN_COUNTS"))

    def claim_latencies(self, since_ms: int, limit: int = 10_000) -> list[int]:
        """Due-to-claim waits (ms) of first attempts finished since ``since_ms``, newest
        first, at most ``limit``."""
        rows = self._read(self.sql("CLAIM_LATENCIES"), {"since": since_ms, "limit": limit})
        return [int(r["wait"]) for r in rows]

    def schema_revision(self) -> str | None:
        """The applied migration (``None`` when the schema was never created)."""
        rows = self._read(self.sql("SCHEMA_REVISION"))
        return str(rows[0]["version_num"]) if rows else None

    # -- API tokens --------------------------------------------------------------------------

    def create_token(self, token_id: str, name: str, role: str, token_hash: str) -> Row | None:
        """Store a token; ``None`` when an active token already has this name."""
        with self._transaction() as tx:
            if tx.read(self.sql("ACTIVE_TOKEN_NAMED"), {"name": name}):
                return None
            tx.write(
                self.sql("INSERT_TOKEN"),
                {"id": token_id, "name": name, "role": role, "token_hash": token_hash},
            )
            return tx.read(self.sql("GET_TOKEN"), {"id": token_id})[0]

    def token_by_hash(self, token_hash: str) -> Row | None:
        """The active token with this hash."""
        rows = self._read(self.sql("GET_TOKEN_BY_HASH"), {"token_hash": token_hash})
        return rows[0] if rows else None

    def list_tokens(self) -> list[Row]:
        return self._read(self.sql("LIST_TOKENS"))

    def find_active_tokens(self, ident: str) -> list[Row]:
        """Active tokens whose id or name is ``ident``."""
        return self._read(self.sql("FIND_ACTIVE_TOKENS"), {"ident": ident})

    def revoke_token(self, token_id: str) -> Row | None:
        """Revoke an active token; returns it, or ``None`` if it was not active."""
        with self._transaction() as tx:
            if not tx.write(self.sql("REVOKE_TOKEN"), {"id": token_id}):
                return None
            return tx.read(self.sql("GET_TOKEN"), {"id": token_id})[0]

    def has_active_tokens(self) -> bool:
        return bool(self._read(self.sql("ANY_ACTIVE_TOKEN")))

    def touch_token(self, token_id: str) -> None:
        self._write(self.sql("TOUCH_TOKEN"), {"id": token_id})


def _run_filter(f: RunFilter) -> tuple[list[str], dict[str, Any]]:
    """The ``WHERE`` clauses and parameters of a run filter (``:limit`` included)."""
    clauses: list[str] = []
    params: dict[str, Any] = {"limit": f.limit}
    for column in _FILTER_COLUMNS:
        value = getattr(f, column)
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    if f.since_ms is not None:
        clauses.append("created_at >= :since_ms")
        params["since_ms"] = f.since_ms
    if f.until_ms is not None:
        clauses.append("created_at < :until_ms")
        params["until_ms"] = f.until_ms
    return clauses, params


Outcome = tuple[str, dict[str, Any]]
"""A fenced end-of-attempt write: a query name of :mod:`queries` and its parameters."""


def finish_outcome(
    run_id: str,
    token: int,
    status: str,
    *,
    result: str | None = None,
    error: str | None = None,
    traceback: str | None = None,
    failed_step: str | None = None,
) -> Outcome:
    """The run ends with ``status`` (succeeded, failed or cancelled)."""
    return "FINISH_RUN", {
        "run_id": run_id,
        "token": token,
        "status": status,
        "result": result,
        "error": error,
        "traceback": traceback,
        "failed_step": failed_step,
    }


def retry_outcome(
    run_id: str, token: int, delay_ms: int, *, error: str, traceback: str, failed_step: str | None
) -> Outcome:
    """The attempt failed; the next one starts after ``delay_ms``."""
    return "RETRY_LATER", {
        "run_id": run_id,
        "token": token,
        "delay_ms": delay_ms,
        "error": error,
        "traceback": traceback,
        "failed_step": failed_step,
    }


def suspend_outcome(run_id: str, token: int, wake_ms: int) -> Outcome:
    """The run sleeps, without a slot, until ``wake_ms``."""
    return "SUSPEND", {"run_id": run_id, "token": token, "wake_ms": wake_ms}


def hand_back_outcome(run_id: str, token: int) -> Outcome:
    """The worker gives the run back to its queue; the attempt is not counted."""
    return "HAND_BACK", {"run_id": run_id, "token": token}


#: Outcomes whose statement answers the run's new status (``cancelled`` when a cancel request
#: won over the retry, the sleep or the hand-back).
RETURNS_STATUS = frozenset({"RETRY_LATER", "SUSPEND", "HAND_BACK"})


@dataclass(frozen=True)
class Heartbeat:
    """The answer of :meth:`Store.heartbeat`."""

    owned: dict[str, Row]  # held runs still owned: id -> id, lease_token, cancel_requested
    handed_back: list[Row]  # runs owned in the database but not held: id, status


@dataclass(frozen=True)
class Recovery:
    """The answer of :meth:`Store.recover_expired`: ids requeued and cancelled, poison rows."""

    requeued: list[str]
    poisoned: list[Row]
    cancelled: list[str]


def _claimed(r: Row) -> ClaimedRun:
    return ClaimedRun(
        id=r["id"],
        flow=r["flow"],
        params=r["params"],
        attempt=r["attempts"],
        max_attempts=r["max_attempts"],
        token=r["lease_token"],
        queue=r["queue"],
        parent_id=r["parent_id"],
        has_history=bool(r["has_history"]),
        suspect=bool(r["crashes"]),
        recovered=bool(r["recoveries"]),
    )


def _flow(row: Row) -> FlowRecord:
    return FlowRecord(
        **{
            **row,
            "is_async": bool(row["is_async"]),
            "schedules_paused": bool(row["schedules_paused"]),
        }
    )
