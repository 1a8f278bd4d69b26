"""Helpers of the acceptance suite: a test's workers and database, and output checks."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from legato.store import TERMINAL, Store, open_store
from tests.helpers import FLOWS, WorkerProcess, cli_json, run_cli, wait_for

APP = str(FLOWS / "acceptance.py")


class Cluster:
    """The workers and the database of one test."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.db_url = db_url
        self.tmp_path = tmp_path
        self.workers: list[WorkerProcess] = []
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        """A store on the test's database, opened (and migrated) on first use."""
        if self._store is None:
            self._store = open_store(self.db_url)
        return self._store

    def start_worker(
        self,
        *,
        concurrency: int = 4,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        queues: Sequence[str] = (),
    ) -> WorkerProcess:
        """Start ``legato worker tests/flows/acceptance.py``; by default wait until it serves
        (its flows are registered and it is listed as a live worker)."""
        log = self.tmp_path / f"worker-{len(self.workers) + 1}.log"
        worker = WorkerProcess(
            APP, self.db_url, concurrency=concurrency, env=env, log_path=log, queues=queues
        )
        self.workers.append(worker)
        if wait_ready:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: WorkerProcess, timeout: float = 60) -> None:
        def serving() -> bool:
            assert worker.proc.poll() is None, f"worker exited early:\n{worker.output()}"
            return any(
                w["pid"] == worker.pid and w["alive"] for w in self.store.list_workers(60_000)
            )

        wait_for(serving, timeout=timeout, interval=0.05, message=f"worker {worker.pid} to serve")

    def run(self, run_id: str) -> dict[str, Any]:
        row = self.store.get_run(run_id)
        assert row is not None, f"no run {run_id}"
        return row

    def status(self, run_id: str) -> str:
        status = self.store.get_run_status(run_id)
        assert status is not None, f"no run {run_id}"
        return status

    def wait_status(self, run_id: str, statuses: str | Sequence[str], timeout: float = 60) -> str:
        wanted = {statuses} if isinstance(statuses, str) else set(statuses)
        seen: list[str] = []

        def reached() -> str | None:
            status = self.status(run_id)
            if not seen or seen[-1] != status:
                seen.append(status)
            return status if status in wanted else None

        try:
            return wait_for(reached, timeout=timeout, interval=0.05)
        except AssertionError:
            raise AssertionError(
                f"run {run_id} never reached {sorted(wanted)}; statuses seen: {seen}\n"
                + self.worker_logs()
            ) from None

    def wait_finished(self, run_id: str, timeout: float = 60) -> str:
        return self.wait_status(run_id, TERMINAL, timeout)

    def worker_logs(self) -> str:
        return "\n".join(
            f"--- worker {w.pid} (exit {w.proc.poll()}) ---\n{w.output()}" for w in self.workers
        )

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        if self._store is not None:
            self._store.close()


def lines(path: Path) -> list[str]:
    """The lines of a side-effect file (none if it does not exist yet)."""
    return path.read_text().splitlines() if path.exists() else []


def submit(db_url: str, flow: str, *args: str, env: dict[str, str] | None = None) -> str:
    """``legato submit FLOW ARGS``; returns the printed run id."""
    result = run_cli(["submit", flow, *args], db_url, env=env)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    assert run_id and "\n" not in run_id, result.stdout
    return run_id


def show(db_url: str, run_id: str) -> dict[str, Any]:
    """``legato runs show RUN --json``."""
    run: dict[str, Any] = cli_json(["runs", "show", run_id], db_url)
    return run


def assert_one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The command failed with exactly one ``error: …`` line on stderr, and no traceback."""
    assert result.returncode != 0, f"exit 0 for bad input; stdout={result.stdout!r}"
    err = result.stderr
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("error: "), err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), f"{fragment!r} not in {err!r}"
    return err


def parse_utc(value: Any) -> datetime:
    """An ISO 8601 timestamp in UTC, as the SPEC requires of every JSON time."""
    assert isinstance(value, str), value
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() == timedelta(0), value
    return moment


def assert_keys(item: dict[str, Any], keys: Sequence[str], what: str) -> None:
    missing = set(keys) - set(item)
    assert not missing, f"{what} lacks {sorted(missing)}: {json.dumps(item)[:500]}"


def holds_a_transaction(db_url: str, pid: int) -> bool:
    """Whether process ``pid`` is inside a write transaction (SQLite: holds the write lock;
    PostgreSQL: one of its sessions is in a transaction)."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db_url.split("?")[0], autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state <> 'idle'",
            (f"legato:{pid}",),
        ).fetchone()
        return bool(row and row[0])


def freeze_between_transactions(worker: WorkerProcess, db_url: str) -> None:
    """SIGSTOP ``worker`` at a moment it holds no transaction, so that the others are not
    blocked on its locks while it is frozen (a frozen SQLite writer would stop every write)."""

    def frozen_outside() -> bool:
        worker.signal(signal.SIGSTOP)
        if not holds_a_transaction(db_url, worker.pid):
            return True
        worker.signal(signal.SIGCONT)
        return False

    wait_for(frozen_outside, timeout=30, message="the worker frozen between transactions")
