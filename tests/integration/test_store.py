"""The store contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
import time

import pytest

from legato.app import new_run_id
from legato.store import NewRun, RunFilter, Store, open_store
from legato.store.records import FlowRecord, LogLine

LEASE = 30_000


def new(flow: str = "f", **kw: object) -> NewRun:
    return NewRun(
        id=new_run_id(), flow=flow, params="{}", queue=str(kw.pop("queue", "default")), **kw
    )  # type: ignore[arg-type]


def make(store: Store, **kw: object) -> str:
    row, created = store.create_run(new(**kw))
    assert created
    return str(row["id"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_migrations_are_idempotent_and_match_the_schema(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, inspect

    from legato.store import parse_url
    from legato.store.migrate import HEAD, upgrade
    from legato.store.schema import metadata

    store = open_store(db_url)
    store.close()
    url = parse_url(db_url)
    upgrade(url)  # running again changes nothing
    store = open_store(db_url)
    assert store._read("SELECT version_num FROM alembic_version")[0]["version_num"] == HEAD
    store.close()
    args = {"options": f"-c search_path={url.schema}"} if url.backend == "postgresql" else {}
    engine = create_engine(url.sqlalchemy_url, connect_args=args)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_schemas": False})
        # Expression indexes (DESC columns, partial indexes) are compared by name below.
        diffs = [
            d
            for d in compare_metadata(ctx, metadata)
            if isinstance(d, tuple) and d[0] not in ("add_index", "remove_index")
        ]
        inspector = inspect(conn)
        indexes = {
            (table.name, ix["name"])
            for table in metadata.sorted_tables
            for ix in inspector.get_indexes(table.name)
        }
    engine.dispose()
    assert diffs == []
    expected = {(t.name, ix.name) for t in metadata.sorted_tables for ix in t.indexes}
    assert expected <= indexes


def test_create_and_read_a_run(store: Store) -> None:
    run_id = make(store, max_attempts=3, priority=2)
    row = store.get_run(run_id)
    assert row is not None
    assert row["status"] == "queued"
    assert row["attempts"] == 0 and row["max_attempts"] == 3 and row["priority"] == 2
    assert abs(row["created_at"] - store.now_ms()) < 5_000
    assert store.get_run("nope") is None
    assert store.resolve_run_id(run_id[:20]) == run_id


def test_delayed_runs_are_scheduled_and_not_claimed_early(store: Store) -> None:
    run_id = make(store, delay_ms=60_000)
    assert store.get_run_status(run_id) == "scheduled"
    assert store.claim("w", ["default"], 10, LEASE) == []
    past = make(store, at_ms=store.now_ms() - 1000)
    assert store.get_run_status(past) == "queued"
    assert [c.id for c in store.claim("w", ["default"], 10, LEASE)] == [past]


def test_idempotency_key_returns_the_existing_run(store: Store) -> None:
    first, created = store.create_run(new(idempotency_key="k1"))
    second, created_again = store.create_run(new(idempotency_key="k1"))
    assert created and not created_again
    assert first["id"] == second["id"]
    assert len(store.list_runs(RunFilter())) == 1


def test_claim_respects_queues_priority_and_limit(store: Store) -> None:
    low = make(store)
    other = make(store, queue="other")
    high = make(store, priority=10)
    claimed = store.claim("w1", ["default"], 1, LEASE)
    assert [c.id for c in claimed] == [high]
    assert claimed[0].attempt == 1 and claimed[0].token == 1 and not claimed[0].has_history
    assert [c.id for c in store.claim("w1", ["default"], 5, LEASE)] == [low]
    assert store.claim("w1", ["default"], 5, LEASE) == []
    assert [c.id for c in store.claim("w2", ["other", "x"], 5, LEASE)] == [other]
    row = store.get_run(high)
    assert row is not None and row["status"] == "running" and row["worker_id"] == "w1"


def test_concurrent_claims_never_hand_out_a_run_twice(store: Store) -> None:
    store.create_runs([new() for _ in range(200)])
    got: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while True:
            batch = store.claim(name, ["default"], 7, LEASE)
            if not batch:
                return
            with lock:
                got.extend(c.id for c in batch)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 200 and len(set(got)) == 200


def test_fencing_rejects_writes_with_a_stale_token(store: Store) -> None:
    run_id = make(store)
    (claimed,) = store.claim("w1", ["default"], 1, LEASE)
    stale = claimed.token - 1
    assert not store.step_started(run_id, stale, 0, "s", 1)
    assert store.step_started(run_id, claimed.token, 0, "s", 1)
    assert not store.step_finished(run_id, stale, 0, "succeeded", result="1")
    store.write_logs([LogLine(run_id, stale, 1, "INFO", None, 1, "ghost")])
    store.write_logs([LogLine(run_id, claimed.token, 1, "INFO", "s", 1, "real")])
    assert [line["message"] for line in store.get_logs(run_id)] == ["real"]
    assert not store.finish_run(run_id, stale, "succeeded", result="1")
    assert store.finish_run(run_id, claimed.token, "succeeded", result="2")
    assert not store.finish_run(run_id, claimed.token, "failed", error="late")
    row = store.get_run(run_id)
    assert row is not None and row["status"] == "succeeded" and row["result"] == "2"


def test_expired_leases_are_requeued_and_resume_the_same_attempt(store: Store) -> None:
    run_id = make(store)
    (first,) = store.claim("w1", ["default"], 1, 1)  # a 1 ms lease
    assert store.step_started(run_id, first.token, 0, "s", 1)
    time.sleep(0.01)
    assert store.requeue_expired() == 1
    (second,) = store.claim("w2", ["default"], 1, LEASE)
    assert second.id == run_id and second.token > first.token
    assert second.attempt == 1 and second.has_history
    row = store.get_run(run_id)
    assert row is not None and row["recoveries"] == 1 and row["worker_id"] == "w2"
    assert not store.finish_run(run_id, first.token, "succeeded", result="0")
    beat = store.heartbeat("w1", LEASE, held=[run_id])
    assert beat.owned == {} and beat.handed_back == []


def test_heartbeat_extends_leases_and_reports_cancel_requests(store: Store) -> None:
    store.register_worker("w1", "host", 1, ["default"], 4)
    a, b = make(store), make(store)
    claims = {c.id: c for c in store.claim("w1", ["default"], 2, 1)}
    assert store.cancel_run(b) == "running"
    rows = store.heartbeat("w1", LEASE, held=[a, b]).owned
    assert set(rows) == {a, b}
    assert rows[b]["cancel_requested"] == 1 and rows[a]["cancel_requested"] == 0
    assert rows[a]["lease_token"] == claims[a].token
    time.sleep(0.01)
    assert store.requeue_expired() == 0  # the heartbeat extended the 1 ms leases
    (worker,) = store.list_workers(dead_after_ms=60_000)
    assert worker["alive"] and worker["running"] == 2 and worker["queues"] == ["default"]


def test_cancel_a_waiting_run_at_once(store: Store) -> None:
    run_id = make(store)
    assert store.cancel_run(run_id) == "cancelled"
    assert store.get_run_status(run_id) == "cancelled"
    assert store.cancel_run(run_id) == "cancelled"  # unchanged terminal status
    assert store.cancel_run("missing") is None
    assert store.claim("w", ["default"], 5, LEASE) == []


def test_retry_later_waits_for_its_delay(store: Store) -> None:
    run_id = make(store, max_attempts=3)
    (c,) = store.claim("w", ["default"], 1, LEASE)
    assert store.retry_later(run_id, c.token, 60_000, error="E: x", traceback="tb", failed_step="s")
    row = store.get_run(run_id)
    assert row is not None and row["status"] == "retrying" and row["error"] == "E: x"
    assert store.claim("w", ["default"], 1, LEASE) == []
    (c2,) = store.claim("w", ["default"], 1, LEASE) or [None]  # type: ignore[list-item]
    assert c2 is None
    # a zero delay requeues at once, counting a new attempt
    run2 = make(store, max_attempts=3)
    (d,) = store.claim("w", ["default"], 1, LEASE)
    assert store.retry_later(run2, d.token, 0, error="E", traceback="", failed_step=None)
    (d2,) = store.claim("w", ["default"], 1, LEASE)
    assert d2.id == run2 and d2.attempt == 2


def test_hand_back_keeps_the_attempt(store: Store) -> None:
    run_id = make(store)
    (c,) = store.claim("w", ["default"], 1, LEASE)
    assert store.hand_back(run_id, c.token)
    assert store.get_run_status(run_id) == "queued"
    (again,) = store.claim("w", ["default"], 1, LEASE)
    assert again.attempt == 1 and again.token > c.token
    assert store.hand_back_all("w") == 1


def test_every_status_change_is_an_event(store: Store) -> None:
    run_id = make(store)
    (c,) = store.claim("w", ["default"], 1, LEASE)
    store.finish_run(run_id, c.token, "succeeded", result="1")
    events = store.get_events(run_id)
    assert [e["status"] for e in events] == ["queued", "running", "succeeded"]
    assert events[1]["worker_id"] == "w" and events[1]["attempt"] == 1
    assert events[0]["ts"] <= events[1]["ts"] <= events[2]["ts"]


def test_steps_are_recorded_in_order(store: Store) -> None:
    run_id = make(store)
    (c,) = store.claim("w", ["default"], 1, LEASE)
    assert store.step_started(run_id, c.token, 0, "a", 1)
    assert store.step_finished(run_id, c.token, 0, "succeeded", result='{"x":1}')
    assert store.step_started(run_id, c.token, 1, "b", 1)
    assert store.step_finished(run_id, c.token, 1, "failed", error="E", traceback="tb")
    assert store.step_started(run_id, c.token, 1, "b", 1)  # an in-place retry
    steps = store.get_steps(run_id)
    assert [(s.name, s.status, s.attempts) for s in steps] == [
        ("a", "succeeded", 1),
        ("b", "running", 2),
    ]
    assert steps[0].result == '{"x":1}' and steps[0].finished_at is not None


def test_lists_stats_and_queues(store: Store) -> None:
    done = make(store, flow="a")
    make(store, flow="b", queue="q2")
    (c,) = store.claim("w", ["default"], 1, LEASE)
    store.finish_run(done, c.token, "succeeded", result="null")
    assert [r["id"] for r in store.list_runs(RunFilter(flow="a"))] == [done]
    assert len(store.list_runs(RunFilter(status="queued"))) == 1
    assert len(store.list_runs(RunFilter(limit=1))) == 1
    now = store.now_ms()
    rows = store.stats(now - 60_000, now + 1000)
    counts = {(r["flow"], r["status"]): r["n"] for r in rows}
    assert counts == {("a", "succeeded"): 1, ("b", "queued"): 1}
    assert store.stats(now - 60_000, now + 1000, flow="b")[0]["status"] == "queued"
    queues = {q["queue"]: q for q in store.queue_counts()}
    assert queues["q2"]["queued"] == 1 and "default" not in queues


def test_flows_are_upserted(store: Store) -> None:
    store.upsert_flows([FlowRecord(name="f", queue="q", max_attempts=2, description="one")])
    store.upsert_flows([FlowRecord(name="f", queue="q", max_attempts=3, description="two")])
    (flow,) = store.list_flows()
    assert flow.max_attempts == 3 and flow.description == "two"
    assert store.get_flow("missing") is None
