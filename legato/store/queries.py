"""Every SQL statement of the store, written once for both backends.

Statements use ``:name`` parameters and dialect fragments that each backend fills in:

- ``{now}`` — the database clock in epoch milliseconds (all due-time and lease comparisons);
- ``{skip_locked}`` — ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, nothing on SQLite (whose
  writers are serialised by ``BEGIN IMMEDIATE``); ``{lock_schedules}`` the same for the
  schedules row of a join;
- ``{claim_pick}`` — the ids a claim takes from the worker's queues (see ``claim_pick``);
- ``{seq}`` — submission order: the ``seq`` identity column on PostgreSQL, ``rowid`` on SQLite.

Claim order is ``claim_at`` (the due time minus one minute per priority point: a run's
effective priority grows by one each minute it waits), then submission order.

Writes made by a worker for a run are *fenced*: they only apply while the run is still
``running`` under the lease token the worker got when it claimed the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

RUN_COLUMNS = (
    "id, flow, status, params, result, error, traceback, failed_step, attempts, max_attempts, "
    "queue, priority, trigger, worker_id, parent_id, retry_of, idempotency_key, created_at, "
    "scheduled_for, started_at, finished_at, lease_token, lease_expires_at, cancel_requested, "
    "recoveries, crashes, schedule_id, limit_keys"
)
CLAIMABLE = "('queued', 'scheduled', 'retrying', 'sleeping')"
# The claim order (the runs_claim index, after queue and gated): ``claim_at``, the due time minus
# one minute per priority point, kept in step with ``scheduled_for`` by every write of it.
CLAIM_KEY = "claim_at"
PRIORITY_MINUTE_MS = 60_000
_AGE = f"CAST(:priority AS BIGINT) * {PRIORITY_MINUTE_MS}"
NOT_FINISHED = "('queued', 'scheduled', 'retrying', 'sleeping', 'running')"
FENCE = (
    "EXISTS (SELECT 1 FROM runs WHERE id = :run_id AND lease_token = :token AND status = 'running')"
)

# A run leaving ``running`` for a waiting status ends ``cancelled`` instead when a cancel was
# requested: a cancel request wins over a retry, a sleep, a hand-back and a recovery.
_OR_CANCELLED = "CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE {otherwise} END"
_CANCELLED_AT = "CASE WHEN cancel_requested = 1 THEN {now} ELSE finished_at END"
_CANCELLED_ERROR = "CASE WHEN cancel_requested = 1 THEN 'cancelled on request' ELSE {otherwise} END"

RUN_INSERT_COLUMNS = (
    "INSERT INTO runs (id, flow, status, params, max_attempts, queue, priority, trigger, "
    "parent_id, retry_of, schedule_id, idempotency_key, created_at, scheduled_for, limit_keys, "
    "claim_at, gated)"
)
# The due time: an absolute time (at_ms) or a delay from the database clock.
_DUE = "COALESCE(CAST(:at_ms AS BIGINT), {now} + :delay_ms)"
RUN_VALUES = f"""(:id, :flow, CASE WHEN {_DUE} > {{now}} THEN 'scheduled' ELSE 'queued' END,
        :params, :max_attempts, :queue, :priority, :trigger, :parent_id, :retry_of,
        :schedule_id, :idempotency_key, {{now}}, {_DUE}, :limit_keys, {_DUE} - {_AGE},
        CASE WHEN CAST(:limit_keys AS TEXT) IS NULL THEN 0 ELSE 1 END)"""
INSERT_RUN = f"""
{RUN_INSERT_COLUMNS}
VALUES {RUN_VALUES}
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {RUN_COLUMNS}
"""
INSERT_RUN_QUIETLY = f"""
{RUN_INSERT_COLUMNS}
VALUES {RUN_VALUES}
ON CONFLICT (idempotency_key) DO NOTHING
"""
# PostgreSQL bulk form: one short statement, one array per column.
INSERT_RUNS_UNNEST = f"""
{RUN_INSERT_COLUMNS}
SELECT t.id, t.flow,
       CASE WHEN COALESCE(t.at_ms, {{now}} + t.delay_ms) > {{now}} THEN 'scheduled' ELSE 'queued' END,
       t.params, t.max_attempts, t.queue, t.priority, t.trigger, t.parent_id, t.retry_of,
       t.schedule_id, t.idempotency_key, {{now}}, COALESCE(t.at_ms, {{now}} + t.delay_ms),
       t.limit_keys, COALESCE(t.at_ms, {{now}} + t.delay_ms) - CAST(t.priority AS BIGINT) * 60000,
       CASE WHEN t.limit_keys IS NULL THEN 0 ELSE 1 END
FROM unnest(CAST(:id AS text[]), CAST(:flow AS text[]), CAST(:params AS text[]),
            CAST(:max_attempts AS int[]), CAST(:queue AS text[]), CAST(:priority AS int[]),
            CAST(:trigger AS text[]), CAST(:parent_id AS text[]), CAST(:retry_of AS text[]),
            CAST(:schedule_id AS text[]), CAST(:idempotency_key AS text[]),
            CAST(:at_ms AS bigint[]), CAST(:delay_ms AS bigint[]), CAST(:limit_keys AS text[]))
     AS t(id, flow, params, max_attempts, queue, priority, trigger, parent_id, retry_of,
          schedule_id, idempotency_key, at_ms, delay_ms, limit_keys)
ON CONFLICT (idempotency_key) DO NOTHING
"""

GET_RUN = f"SELECT {RUN_COLUMNS} FROM runs WHERE id = :id"
GET_RUN_BY_KEY = f"SELECT {RUN_COLUMNS} FROM runs WHERE idempotency_key = :key"
GET_RUN_STATUS = "SELECT status FROM runs WHERE id = :id"
FIND_RUN_BY_PREFIX = "SELECT id FROM runs WHERE id LIKE :prefix ORDER BY id LIMIT 2"

# The runs a claim takes, best first, from one queue (``:queue``): runs without limits, from a
# queue that is neither paused nor limited (those go through the gated claim). Ordered like
# the partial index ``runs_claim`` (queue, gated, claim_at, seq): it reads only what it takes.
# Placeholders: {queue} (a parameter or column naming the queue), {now} and {seq}.
CLAIM_PICK_ONE_QUEUE = f"""
SELECT id, {CLAIM_KEY} AS claim_key, {{seq}} AS seq FROM runs
WHERE queue = {{queue}} AND status IN {CLAIMABLE} AND scheduled_for <= {{now}}
  AND gated = 0
  AND NOT EXISTS (SELECT 1 FROM queues WHERE name = {{queue}}
                  AND (paused = 1 OR strict = 1 OR concurrency IS NOT NULL))
ORDER BY {CLAIM_KEY}, {{seq}} LIMIT :limit"""

# ``executing`` is the evidence poison detection needs (see FAIL_POISONED): 1 while the run's
# code runs in its worker's process. A claim sets it for the runs the worker starts at once
# (:executing); a suspect (a run that was executing when a worker died) is marked only when
# it really starts, alone (MARK_EXECUTING). A cancel request is never reset by a claim.
_CLAIM_SET = """
UPDATE runs SET status = 'running', worker_id = :worker_id, lease_token = lease_token + 1,
       lease_expires_at = {now} + :lease_ms, attempts = attempts + 1 - resume, resume = 0,
       started_at = COALESCE(started_at, {now}),
       executing = CASE WHEN crashes > 0 THEN 0 ELSE :executing END"""
_CLAIM_RETURNING = """
RETURNING id, flow, params, attempts, max_attempts, lease_token, queue, parent_id,
          CASE WHEN attempts > 1 OR started_at < {now} THEN 1 ELSE 0 END AS has_history,
          claim_at, {seq} AS seq, crashes, recoveries
"""
CLAIM = _CLAIM_SET + "\nWHERE id IN ({claim_pick})" + _CLAIM_RETURNING
# The gated claim takes the ids it admitted ({claim_pick}: a list of parameters); a run
# cancelled meanwhile is not claimable any more.
CLAIM_GATED = (
    _CLAIM_SET + f"\nWHERE id IN ({{claim_pick}}) AND status IN {CLAIMABLE}" + _CLAIM_RETURNING
)

# Poison needs evidence: ``crashes`` counts the lease expiries that found the run executing
# (its code running in the worker's process, not merely claimed). A run whose worker died under
# it more than max_recoveries times fails instead of being recovered again. A cancel request
# wins: such a run is cancelled by REQUEUE_EXPIRED instead.
FAIL_POISONED = """
UPDATE runs SET status = 'failed', finished_at = {now}, lease_expires_at = NULL,
       lease_token = lease_token + 1,
       error = 'PoisonRun: its worker died while it was executing it (lease expired) '
               || CAST(crashes + 1 AS TEXT) || ' times; it was recovered '
               || CAST(recoveries AS TEXT)
               || ' times (max_recoveries) and is not recovered again',
       traceback = NULL
WHERE id IN (SELECT id FROM runs WHERE status = 'running' AND lease_expires_at < {now}
             AND executing = 1 AND cancel_requested = 0
             AND crashes >= COALESCE((SELECT max_recoveries FROM flows
                                      WHERE flows.name = runs.flow), :max_recoveries)
             LIMIT 500 {skip_locked})
RETURNING id, error
"""

REQUEUE_EXPIRED = f"""
UPDATE runs SET status = {_OR_CANCELLED.format(otherwise="'queued'")},
       finished_at = {_CANCELLED_AT}, error = {_CANCELLED_ERROR.format(otherwise="error")},
       worker_id = NULL, resume = 1, recoveries = recoveries + 1, crashes = crashes + executing,
       executing = 0, lease_expires_at = NULL, lease_token = lease_token + 1
WHERE id IN (SELECT id FROM runs WHERE status = 'running' AND lease_expires_at < {{now}}
             LIMIT 500 {{skip_locked}})
RETURNING id, status
"""

# The heartbeat extends the leases of the runs the worker holds ({held}: a list of ids), and
# records which of them are executing ({executing}); it hands back runs the database says the
# worker owns but the worker does not hold (a claim whose answer was lost in a fault).
HEARTBEAT_RUNS = """
UPDATE runs SET lease_expires_at = {now} + :lease_ms,
       executing = CASE WHEN id IN {executing} THEN 1 ELSE 0 END
WHERE worker_id = :worker_id AND status = 'running' AND id IN {held}
RETURNING id, lease_token, cancel_requested
"""
HAND_BACK_ORPHANS = f"""
UPDATE runs SET status = {_OR_CANCELLED.format(otherwise="'queued'")},
       finished_at = {_CANCELLED_AT}, error = {_CANCELLED_ERROR.format(otherwise="error")},
       worker_id = NULL, resume = 1, executing = 0, lease_expires_at = NULL,
       lease_token = lease_token + 1
WHERE worker_id = :worker_id AND status = 'running' AND id NOT IN {{held}}
RETURNING id, status
"""
# PostgreSQL: the whole heartbeat in one statement, so that no transaction stays open between
# its statements (a worker frozen there would hold the rows' locks).
HEARTBEAT_PG = f"""
WITH w AS (UPDATE workers SET last_heartbeat = {{now}}, running = :running WHERE id = :worker_id),
o AS ({HAND_BACK_ORPHANS}),
h AS ({HEARTBEAT_RUNS})
SELECT 'held' AS kind, id, lease_token, cancel_requested, 'running' AS status FROM h
UNION ALL
SELECT 'orphan', id, NULL, NULL, status FROM o
"""

MARK_EXECUTING = """
UPDATE runs SET executing = :executing
WHERE id = :run_id AND lease_token = :token AND status = 'running'
"""

# A last attempt that failed after a cancel request ends the run ``cancelled``.
FINISH_RUN = """
UPDATE runs SET status = CASE WHEN :status = 'failed' AND cancel_requested = 1 THEN 'cancelled'
                              ELSE :status END,
       result = :result, error = :error, traceback = :traceback,
       failed_step = :failed_step, finished_at = {now}, lease_expires_at = NULL
WHERE id = :run_id AND lease_token = :token AND status = 'running'
"""

# PostgreSQL: many FINISH_RUN outcomes in one statement; RETURNING tells which were written.
FINISH_RUNS_UNNEST = """
UPDATE runs SET status = CASE WHEN v.status = 'failed' AND runs.cancel_requested = 1
                              THEN 'cancelled' ELSE v.status END,
       result = v.result, error = v.error, traceback = v.traceback,
       failed_step = v.failed_step, finished_at = {now}, lease_expires_at = NULL
FROM unnest(CAST(:run_id AS text[]), CAST(:token AS bigint[]), CAST(:status AS text[]),
            CAST(:result AS text[]), CAST(:error AS text[]), CAST(:traceback AS text[]),
            CAST(:failed_step AS text[]))
     AS v(run_id, token, status, result, error, traceback, failed_step)
WHERE runs.id = v.run_id AND runs.lease_token = v.token AND runs.status = 'running'
RETURNING runs.id
"""

RETRY_LATER = f"""
UPDATE runs SET status = {_OR_CANCELLED.format(otherwise="CASE WHEN :delay_ms > 0 THEN 'retrying' ELSE 'queued' END")},
       finished_at = {_CANCELLED_AT},
       scheduled_for = {{now}} + :delay_ms,
       claim_at = {{now}} + :delay_ms - CAST(priority AS BIGINT) * 60000,
       error = CASE WHEN cancel_requested = 1 THEN 'cancelled on request (its last attempt failed: '
                    || :error || ')' ELSE :error END,
       traceback = :traceback, failed_step = :failed_step, worker_id = NULL,
       lease_expires_at = NULL
WHERE id = :run_id AND lease_token = :token AND status = 'running'
RETURNING status
"""

HAND_BACK = f"""
UPDATE runs SET status = {_OR_CANCELLED.format(otherwise="'queued'")},
       finished_at = {_CANCELLED_AT}, error = {_CANCELLED_ERROR.format(otherwise="error")},
       worker_id = NULL, resume = 1, lease_expires_at = NULL, lease_token = lease_token + 1
WHERE id = :run_id AND lease_token = :token AND status = 'running'
RETURNING status
"""

SUSPEND = f"""
UPDATE runs SET status = {_OR_CANCELLED.format(otherwise="'sleeping'")},
       finished_at = {_CANCELLED_AT}, error = {_CANCELLED_ERROR.format(otherwise="error")},
       scheduled_for = :wake_ms,
       claim_at = :wake_ms - CAST(priority AS BIGINT) * 60000, worker_id = NULL, resume = 1,
       lease_expires_at = NULL
WHERE id = :run_id AND lease_token = :token AND status = 'running'
RETURNING status
"""

HAND_BACK_ALL = f"""
UPDATE runs SET status = {_OR_CANCELLED.format(otherwise="'queued'")},
       finished_at = {_CANCELLED_AT}, error = {_CANCELLED_ERROR.format(otherwise="error")},
       worker_id = NULL, resume = 1, lease_expires_at = NULL, lease_token = lease_token + 1
WHERE worker_id = :worker_id AND status = 'running'
RETURNING id, status
"""

# A cancel in one statement: a waiting run ends ``cancelled`` at once (a sleeping parent
# too); a running one keeps the request until its worker honours it, whatever happens to the
# attempt meanwhile (retry, sleep, hand-back, recovery all end it ``cancelled``).
CANCEL_RUN = f"""
UPDATE runs SET cancel_requested = 1,
       status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,
       finished_at = CASE WHEN status = 'running' THEN finished_at ELSE {{now}} END,
       error = CASE WHEN status = 'running' THEN error ELSE 'cancelled' END
WHERE id = :id AND status IN {NOT_FINISHED}
RETURNING status
"""

STEP_START = f"""
INSERT INTO steps (run_id, position, name, status, attempts, run_attempt, started_at)
SELECT :run_id, :position, :name, 'running', 1, :run_attempt, {{now}}
WHERE {FENCE}
ON CONFLICT (run_id, position) DO UPDATE
SET name = excluded.name, status = 'running', attempts = steps.attempts + 1,
    run_attempt = excluded.run_attempt, finished_at = NULL, error = NULL, traceback = NULL
"""

STEP_FINISH = f"""
UPDATE steps SET status = :status, finished_at = {{now}}, result = :result, error = :error,
       traceback = :traceback
WHERE run_id = :run_id AND position = :position AND {FENCE}
"""

STEP_RESULT = f"""
UPDATE steps SET result = :result WHERE run_id = :run_id AND position = :position AND {FENCE}
"""

CLOSE_RUNNING_STEPS = """
UPDATE steps SET status = 'failed', finished_at = {now}, error = COALESCE(error, :error)
WHERE run_id = :run_id AND status = 'running'
"""

GET_STEPS = """
SELECT position, name, status, attempts, run_attempt, started_at, finished_at, result, error,
       traceback
FROM steps WHERE run_id = :run_id ORDER BY position
"""

INSERT_LOG = """
INSERT INTO logs (run_id, ts, level, step, attempt, message)
SELECT :run_id, :ts, :level, :step, :attempt, :message
WHERE EXISTS (SELECT 1 FROM runs WHERE id = :run_id AND lease_token = :token)
"""

GET_LOGS = """
SELECT id, ts, level, step, attempt, message FROM logs
WHERE run_id = :run_id AND id > :after ORDER BY id LIMIT :limit
"""

GET_EVENTS = """
SELECT ts, status, attempt, worker_id FROM run_events WHERE run_id = :run_id ORDER BY id
"""

UPSERT_FLOW = """
INSERT INTO flows (name, description, version, queue, priority, max_attempts, timeout_s,
                   retry_policy, schedules, parameters, is_async, on_event, event_filter,
                   flow_control, max_recoveries, updated_at)
VALUES (:name, :description, :version, :queue, :priority, :max_attempts, :timeout_s,
        :retry_policy, :schedules, :parameters, :is_async, :on_event, :event_filter,
        :flow_control, :max_recoveries, {now})
ON CONFLICT (name) DO UPDATE SET description = excluded.description,
    version = excluded.version, queue = excluded.queue, priority = excluded.priority,
    max_attempts = excluded.max_attempts, timeout_s = excluded.timeout_s,
    retry_policy = excluded.retry_policy, schedules = excluded.schedules,
    parameters = excluded.parameters, on_event = excluded.on_event,
    event_filter = excluded.event_filter, flow_control = excluded.flow_control,
    max_recoveries = excluded.max_recoveries,
    is_async = excluded.is_async, updated_at = excluded.updated_at
"""

FLOW_COLUMNS = (
    "name, description, version, queue, priority, max_attempts, timeout_s, retry_policy, "
    "schedules, parameters, is_async, schedules_paused, on_event, event_filter, updated_at, "
    "flow_control, max_recoveries"
)
GET_FLOW = f"SELECT {FLOW_COLUMNS} FROM flows WHERE name = :name"
LIST_FLOWS = f"SELECT {FLOW_COLUMNS} FROM flows ORDER BY name"
SUBSCRIBED_FLOWS = f"SELECT {FLOW_COLUMNS} FROM flows WHERE on_event IS NOT NULL ORDER BY name"
LAST_RUN_OF_FLOW = """
SELECT id, status, created_at, finished_at FROM runs WHERE flow = :flow
ORDER BY created_at DESC, id DESC LIMIT 1
"""

REGISTER_WORKER = """
INSERT INTO workers (id, hostname, pid, queues, concurrency, running, started_at, last_heartbeat)
VALUES (:id, :hostname, :pid, :queues, :concurrency, 0, {now}, {now})
"""

WORKER_HEARTBEAT = """
UPDATE workers SET last_heartbeat = {now}, running = :running WHERE id = :id
"""

WORKER_STOPPED = "UPDATE workers SET stopped_at = {now}, running = 0 WHERE id = :id"

LIST_WORKERS = """
SELECT id, hostname, pid, queues, concurrency, running, started_at, last_heartbeat, stopped_at,
       CASE WHEN stopped_at IS NULL AND last_heartbeat > {now} - :dead_ms THEN 1 ELSE 0 END
         AS alive
FROM workers
WHERE stopped_at IS NULL AND last_heartbeat > {now} - :forget_ms
   OR stopped_at > {now} - :forget_ms
ORDER BY started_at DESC
"""

QUEUE_COUNTS = f"""
SELECT queue,
       SUM(CASE WHEN status <> 'running' AND scheduled_for <= {{now}} THEN 1 ELSE 0 END) AS queued,
       SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS running,
       SUM(CASE WHEN status <> 'running' AND scheduled_for > {{now}} THEN 1 ELSE 0 END) AS later,
       MIN(CASE WHEN status <> 'running' AND scheduled_for <= {{now}} THEN scheduled_for END)
         AS oldest_queued
FROM runs WHERE status IN {NOT_FINISHED}
GROUP BY queue ORDER BY queue
"""

STATS_FINISHED = """
SELECT flow, status, COUNT(*) AS n FROM runs
WHERE finished_at >= :since AND finished_at <= :until {flow_filter}
GROUP BY flow, status
"""

STATS_ACTIVE = f"""
SELECT flow, status, COUNT(*) AS n FROM runs
WHERE status IN {NOT_FINISHED} {{flow_filter}}
GROUP BY flow, status
"""

UPSERT_SCHEDULE = """
INSERT INTO schedules (id, flow, definition, next_fire_at, created_at, updated_at)
VALUES (:id, :flow, :definition, :next_fire_at, {now}, {now})
ON CONFLICT (id) DO UPDATE SET
    next_fire_at = CASE WHEN schedules.definition = excluded.definition
                        THEN schedules.next_fire_at ELSE excluded.next_fire_at END,
    definition = excluded.definition, updated_at = excluded.updated_at
"""

SCHEDULE_IDS_OF_FLOW = "SELECT id FROM schedules WHERE flow = :flow"
DELETE_SCHEDULE = "DELETE FROM schedules WHERE id = :id"

SCHEDULE_COLUMNS = (
    "s.id, s.flow, s.definition, s.next_fire_at, s.last_fire_at, f.queue, f.priority, "
    "f.max_attempts, f.schedules_paused, f.flow_control"
)
DUE_SCHEDULES = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules s JOIN flows f ON f.name = s.flow
WHERE s.next_fire_at <= :now AND f.schedules_paused = 0
ORDER BY s.next_fire_at LIMIT :limit
"""
DUE_SCHEDULES_LOCKED = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules s JOIN flows f ON f.name = s.flow
WHERE s.next_fire_at <= :now AND f.schedules_paused = 0
ORDER BY s.next_fire_at LIMIT :limit {{lock_schedules}}
"""
NEXT_SCHEDULE_DUE = """
SELECT MIN(s.next_fire_at) AS next FROM schedules s JOIN flows f ON f.name = s.flow
WHERE f.schedules_paused = 0
"""
LIST_SCHEDULES = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules s JOIN flows f ON f.name = s.flow
ORDER BY s.flow, s.id
"""
ADVANCE_SCHEDULE = """
UPDATE schedules SET next_fire_at = :next, last_fire_at = :last
WHERE id = :id AND next_fire_at = :old
"""
ADVANCE_SCHEDULES_UNNEST = """
UPDATE schedules SET next_fire_at = v.next, last_fire_at = v.last
FROM unnest(CAST(:id AS text[]), CAST(:old AS bigint[]), CAST(:next AS bigint[]),
            CAST(:last AS bigint[])) AS v(id, old, next, last)
WHERE schedules.id = v.id AND schedules.next_fire_at = v.old
"""

SCHEDULE_ACTIVE_RUNS = f"""
SELECT status FROM runs WHERE schedule_id = :schedule_id AND status IN {NOT_FINISHED}
"""
SET_SCHEDULES_PAUSED = "UPDATE flows SET schedules_paused = :paused WHERE name = :name"

NOW = "SELECT {now} AS now"

# -- REST API: tokens, time series, metrics, readiness --------------------------------------

TOKEN_COLUMNS = "id, name, role, created_at, last_used_at, revoked_at"
INSERT_TOKEN = """
INSERT INTO api_tokens (id, name, role, token_hash, created_at)
VALUES (:id, :name, :role, :token_hash, {now})
"""
ACTIVE_TOKEN_NAMED = "SELECT id FROM api_tokens WHERE name = :name AND revoked_at IS NULL"
GET_TOKEN = f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = :id"
GET_TOKEN_BY_HASH = f"""
SELECT {TOKEN_COLUMNS}, token_hash FROM api_tokens
WHERE token_hash = :token_hash AND revoked_at IS NULL
"""
LIST_TOKENS = f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
FIND_ACTIVE_TOKENS = f"""
SELECT {TOKEN_COLUMNS} FROM api_tokens
WHERE (id = :ident OR name = :ident) AND revoked_at IS NULL
"""
REVOKE_TOKEN = "UPDATE api_tokens SET revoked_at = {now} WHERE id = :id AND revoked_at IS NULL"
ANY_ACTIVE_TOKEN = "SELECT id FROM api_tokens WHERE revoked_at IS NULL LIMIT 1"
TOUCH_TOKEN = "UPDATE api_tokens SET last_used_at = {now} WHERE id = :id"

# Finished runs per time bucket (bucket = index from :since, :bucket ms wide) and status.
STATS_SERIES = """
SELECT (finished_at - :since) / :bucket AS bucket, status, COUNT(*) AS n FROM runs
WHERE finished_at >= :since AND finished_at <= :until {flow_filter}
GROUP BY 1, status
"""

RUN_COUNTS = "SELECT flow, status, COUNT(*) AS n FROM runs GROUP BY flow, status"

# Queue wait of first attempts finished since :since (newest first, at most :limit): the
# time from due to claimed. Retried or slept runs moved scheduled_for after started_at.
CLAIM_LATENCIES = """
SELECT started_at - scheduled_for AS wait FROM runs
WHERE finished_at >= :since AND attempts = 1 AND started_at >= scheduled_for
ORDER BY finished_at DESC LIMIT :limit
"""

SCHEMA_REVISION = "SELECT version_num FROM alembic_version"

_PARAM = re.compile(r"(?<![:\w]):([a-zA-Z_]\w*)")


@dataclass(frozen=True)
class Dialect:
    """What differs between backends in the SQL text."""

    now: str
    skip_locked: str
    lock_schedules: str
    pyformat: bool  # psycopg wants %(name)s; sqlite3 takes :name
    seq: str = "seq"  # the submission order column ("rowid" on SQLite)
    arrays: bool = False  # lists as one array parameter (one statement text, prepared once)

    def id_list(self, name: str) -> str:
        """A subquery over the ids of the list parameter ``name`` (see :meth:`ids`)."""
        if self.arrays:
            return f"(SELECT unnest(CAST(:{name} AS text[])))"
        return f"(SELECT value FROM json_each(:{name}))"

    def ids(self, values: Iterable[str]) -> Any:
        """The value of a list parameter: an array on PostgreSQL, JSON text on SQLite."""
        return list(values) if self.arrays else json.dumps(list(values))


def render(sql: str, dialect: Dialect, **fragments: str) -> str:
    """Fill in the dialect fragments and convert the parameter style."""
    text = sql.format(
        now=dialect.now,
        skip_locked=dialect.skip_locked,
        lock_schedules=dialect.lock_schedules,
        seq=dialect.seq,
        **fragments,
    )
    if dialect.pyformat:
        text = text.replace("%", "%%")
        text = _PARAM.sub(r"%(\1)s", text)
    return text


# -- flow control: queues, limits, the gated claim ---------------------------------------------

QUEUE_SETTINGS = "SELECT name, paused, strict, concurrency FROM queues ORDER BY name"
UPSERT_QUEUE = """
INSERT INTO queues (name, paused, strict, concurrency, updated_at)
VALUES (:name, :paused, :strict, :concurrency, {now})
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, strict = excluded.strict,
    concurrency = excluded.concurrency, updated_at = excluded.updated_at
"""
DELETE_QUEUE = "DELETE FROM queues WHERE name = :name"

LIST_LIMITS = (
    "SELECT name, kind, concurrency, rate, period_ms, updated_at FROM limits ORDER BY name"
)
UPSERT_LIMIT = """
INSERT INTO limits (name, kind, concurrency, rate, period_ms, updated_at)
VALUES (:name, :kind, :concurrency, :rate, :period_ms, {now})
ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, concurrency = excluded.concurrency,
    rate = excluded.rate, period_ms = excluded.period_ms, updated_at = excluded.updated_at
"""
CLEAR_FLOW_LIMIT = """
UPDATE limits SET concurrency = NULL, rate = NULL, period_ms = NULL, updated_at = {now}
WHERE name = :name AND kind = 'flow' AND (concurrency IS NOT NULL OR rate IS NOT NULL)
"""
DELETE_LIMIT = "DELETE FROM limits WHERE name = :name"

# Everything the gated claim counts, in one round trip: queue settings, limit sizes, what
# holds limits now (running runs with limits or in a limited queue), recent starts.
GATED_STATE = """
SELECT 'queue' AS kind, name, CAST(NULL AS TEXT) AS keys, CAST(paused AS BIGINT) AS a,
       CAST(strict AS BIGINT) AS b, CAST(concurrency AS BIGINT) AS c
FROM queues
UNION ALL
SELECT 'limit', name, NULL, CAST(concurrency AS BIGINT), CAST(rate AS BIGINT), period_ms
FROM limits
UNION ALL
SELECT 'running', queue, limit_keys, NULL, NULL, NULL FROM runs
WHERE status = 'running' AND (limit_keys IS NOT NULL OR queue IN (
    SELECT name FROM queues WHERE strict = 1 OR concurrency IS NOT NULL))
UNION ALL
SELECT 'started', r.name, r.key, COUNT(*), MIN(r.ts), NULL FROM rate_starts r
JOIN limits l ON l.name = r.name
WHERE l.rate IS NOT NULL AND r.ts > {now} - l.period_ms
GROUP BY r.name, r.key
"""

# The next candidates of one queue for the gated claim, in claim order, after a position.
# {gated}: 1 (runs with limits) or 0 (plain runs of a limited queue).
GATED_CANDIDATES = f"""
SELECT id, queue, limit_keys, {CLAIM_KEY} AS claim_key, {{seq}} AS seq FROM runs
WHERE queue = :queue AND status IN {CLAIMABLE} AND scheduled_for <= {{now}}
  AND gated = {{gated}} {{after}} {{exclude}}
ORDER BY {CLAIM_KEY}, {{seq}} LIMIT :limit
"""

RATE_COUNTS = """
SELECT r.name, r.key, COUNT(*) AS n, MIN(r.ts) AS first FROM rate_starts r
JOIN limits l ON l.name = r.name
WHERE l.rate IS NOT NULL AND r.ts > {now} - l.period_ms
GROUP BY r.name, r.key
"""
INSERT_RATE_START = """
INSERT INTO rate_starts (name, key, ts, run_id) VALUES (:name, :key, {now}, :run_id)
"""
PRUNE_RATE_STARTS = """
DELETE FROM rate_starts WHERE id IN (
  SELECT r.id FROM rate_starts r LEFT JOIN limits l ON l.name = r.name
  WHERE l.rate IS NULL OR r.ts <= {now} - l.period_ms LIMIT 5000)
"""

# "Why is it waiting?": what holds a limit now.
RUNNING_WITH_LIMITS = """
SELECT id, queue, limit_keys, started_at FROM runs
WHERE status = 'running' AND limit_keys IS NOT NULL
"""
RUNNING_IN_QUEUE = """
SELECT id FROM runs WHERE status = 'running' AND queue = :queue ORDER BY started_at, id
"""
STRICT_AHEAD = f"""
SELECT COUNT(*) AS n FROM runs
WHERE queue = :queue AND status IN {CLAIMABLE} AND scheduled_for <= {{now}}
  AND (claim_at < :claim_key OR (claim_at = :claim_key AND {{seq}} < :seq))
"""
RUN_SEQ = f"SELECT {CLAIM_KEY} AS claim_key, {{seq}} AS seq FROM runs WHERE id = :id"
