"""Fault semantics, on SQLite and PostgreSQL: durable cancel requests, poison evidence, orphans,
payload limits, and database errors that never reach the user as driver errors."""

from __future__ import annotations

import os
import socket
import time

import pytest

from legato import App, DatabaseUnavailable, RunFailed, Settings
from legato.app import new_run_id
from legato.store import ClaimedRun, NewRun, Store
from legato.store.base import Recovery
from tests.helpers import in_process_worker, run_cli, wait_for

LEASE = 30_000


def make(store: Store, queue: str = "default") -> str:
    row, created = store.create_run(
        NewRun(id=new_run_id(), flow="f", params="{}", queue=queue, max_attempts=3)
    )
    assert created
    return str(row["id"])


def status_and_error(store: Store, run_id: str) -> tuple[str, str | None]:
    row = store.get_run(run_id)
    assert row is not None
    return row["status"], row["error"]


def test_a_cancel_request_outlives_the_attempt_it_was_made_in(store: Store) -> None:
    """Retry, sleep, hand-back, recovery and a failed last attempt all end it ``cancelled``;
    no claim resets it."""
    ids = {name: make(store) for name in ("retry", "sleep", "hand_back", "fail", "ok")}
    claims = {c.id: c for c in store.claim("w", ["default"], 5, LEASE)}
    for run_id in ids.values():
        assert store.cancel_run(run_id) == "running"
    token = {name: claims[run_id].token for name, run_id in ids.items()}
    assert store.retry_later(
        ids["retry"], token["retry"], 0, error="ValueError: x", traceback="tb", failed_step=None
    )
    assert store.suspend(ids["sleep"], token["sleep"], store.now_ms() + 60_000)
    assert store.hand_back(ids["hand_back"], token["hand_back"])
    assert store.finish_run(ids["fail"], token["fail"], "failed", error="ValueError: y")
    assert store.finish_run(ids["ok"], token["ok"], "succeeded", result="1")
    assert status_and_error(store, ids["retry"]) == (
        "cancelled",
        "cancelled on request (its last attempt failed: ValueError: x)",
    )
    assert status_and_error(store, ids["sleep"]) == ("cancelled", "cancelled on request")
    assert status_and_error(store, ids["hand_back"]) == ("cancelled", "cancelled on request")
    assert status_and_error(store, ids["fail"])[0] == "cancelled"
    assert status_and_error(store, ids["ok"])[0] == "succeeded"  # it finished its work
    assert store.claim("w", ["default"], 5, LEASE) == []  # none of them starts again

    recovered = make(store)
    (claim,) = store.claim("w", ["default"], 1, 1)  # a 1 ms lease
    assert store.step_started(recovered, claim.token, 0, "s", 1)
    assert store.cancel_run(recovered) == "running"
    time.sleep(0.01)
    recovery = store.recover_expired()
    assert recovery.cancelled == [recovered] and recovery.requeued == []
    assert status_and_error(store, recovered) == ("cancelled", "cancelled on request")
    assert [s.status for s in store.get_steps(recovered)] == ["failed"]  # its step ended too


def test_cancelling_a_sleeping_run_ends_it_at_once(store: Store) -> None:
    run_id = make(store)
    (claim,) = store.claim("w", ["default"], 1, LEASE)
    assert store.suspend(run_id, claim.token, store.now_ms() + 3_600_000)
    assert store.cancel_run(run_id) == "cancelled"
    assert status_and_error(store, run_id) == ("cancelled", "cancelled")


def test_poison_needs_evidence_only_executing_runs_count(store: Store) -> None:
    """A lease expiry counts against a run only if it was executing; a run claimed ahead of a
    free slot is a bystander. A suspect is not marked executing by a claim: only when it
    starts (alone)."""
    executing, waiting = make(store), make(store)

    def claim_both() -> tuple[ClaimedRun, ClaimedRun]:
        (started,) = store.claim("w", ["default"], 1, 1, executing=True)  # a 1 ms lease
        (held,) = store.claim("w", ["default"], 1, 1)
        assert (started.id, held.id) == (executing, waiting)
        return started, held

    def expire() -> Recovery:
        time.sleep(0.01)
        return store.recover_expired(max_recoveries=2)

    def crashes(run_id: str) -> int:
        row = store.get_run(run_id)
        assert row is not None
        return int(row["crashes"])

    started, held = claim_both()
    assert not started.suspect and not held.suspect
    assert sorted(expire().requeued) == sorted([executing, waiting])
    assert (crashes(executing), crashes(waiting)) == (1, 0)

    started, held = claim_both()
    assert started.suspect and not held.suspect and held.recovered
    assert sorted(expire().requeued) == sorted([executing, waiting])
    assert crashes(executing) == 1  # claimed, never started: not counted

    for expected in (2, None):
        started, _ = claim_both()
        assert store.mark_executing(started.id, started.token)  # it starts, alone
        recovery = expire()
        if expected is not None:
            assert crashes(executing) == expected
    assert [r["id"] for r in recovery.poisoned] == [executing]
    assert recovery.requeued == [waiting]
    row = store.get_run(executing)
    assert row is not None and row["status"] == "failed"
    assert row["error"].startswith("PoisonRun: its worker died while it was executing it")
    other = store.get_run(waiting)
    assert other is not None and other["status"] == "queued" and other["crashes"] == 0


def test_heartbeat_extends_held_runs_marks_executing_and_hands_back_orphans(store: Store) -> None:
    store.register_worker("w1", "host", 1, ["default"], 4)
    a, b, c = make(store), make(store), make(store)
    claims = {r.id: r for r in store.claim("w1", ["default"], 3, 1)}
    assert store.cancel_run(c) == "running"
    beat = store.heartbeat("w1", LEASE, held=[a], executing=[a])
    assert set(beat.owned) == {a}
    assert beat.owned[a]["lease_token"] == claims[a].token
    assert sorted((r["id"], r["status"]) for r in beat.handed_back) == sorted(
        [(b, "queued"), (c, "cancelled")]
    )
    time.sleep(0.01)
    assert store.recover_expired().requeued == []  # a's lease was extended
    row = store.get_run(b)
    assert row is not None and row["recoveries"] == 0 and row["worker_id"] is None
    # a was executing at the heartbeat: its lease expiring now would count against it.
    time.sleep(0.01)
    store.heartbeat("w1", 1, held=[a], executing=[a])
    time.sleep(0.01)
    assert store.recover_expired().requeued == [a]
    row = store.get_run(a)
    assert row is not None and row["crashes"] == 1


def test_results_over_the_payload_limit_fail_the_attempt_and_long_log_lines_are_cut(
    db_url: str,
) -> None:
    app = App(db_url, settings=Settings.from_env(max_payload_bytes=1000, max_log_line_bytes=200))

    @app.step
    def big_step() -> str:
        return "x" * 5000

    @app.flow
    def big_result() -> str:
        print("y" * 1000)
        return "x" * 5000

    @app.flow
    def big_step_result() -> str:
        return big_step()

    with in_process_worker(app):
        first = big_result.submit()
        second = big_step_result.submit()
        with pytest.raises(RunFailed, match="PayloadTooLarge: result of flow 'big_result'"):
            first.result(timeout=30)
        with pytest.raises(RunFailed, match="PayloadTooLarge: result of step 'big_step'"):
            second.result(timeout=30)
    run = second.info()
    assert run["attempts"] == 1  # not retried: another attempt cannot mend it
    assert [(s["name"], s["status"]) for s in run["steps"]] == [("big_step", "failed")]
    assert run["failed_step"] == "big_step"
    (line,) = [ln["message"] for ln in app.store.get_logs(first.id)]
    assert len(line.encode()) <= 200 and "line cut: 1000 bytes" in line
    app.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_postgresql_fails_fast_with_one_typed_error() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    began = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="cannot connect to PostgreSQL"):
        App(url).submit("anything")
    assert time.monotonic() - began < 10
    result = run_cli(["submit", "anything"], url)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot connect to PostgreSQL at ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.postgres
def test_connections_cut_by_the_server_never_reach_the_user(
    pg_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """After every session of this process is terminated (as a restart would), the next
    calls find their pooled connections dead and go on with fresh ones, silently."""
    import psycopg

    app = App(pg_url)

    @app.flow
    def noop() -> None:
        return None

    app.register()
    handles = [noop.submit() for _ in range(3)]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"legato:{os.getpid()}",),
        )
    wait_for(lambda: _sessions_gone(pg_url), timeout=10, message="the sessions to end")
    for handle in handles:
        assert handle.status() == "queued"
    assert noop.submit().status() == "queued"
    captured = capfd.readouterr()
    assert "psycopg" not in captured.err and "AdminShutdown" not in captured.err, captured.err
    app.close()


def _sessions_gone(pg_url: str) -> bool:
    import psycopg

    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (f"legato:{os.getpid()}",),
        ).fetchone()
    return bool(row and row[0] == 0)
