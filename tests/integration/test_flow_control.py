"""Flow control with real worker processes: concurrency limits (per flow, per key, named),
priorities, strict and paused queues, poison runs. Every limit is checked from the database."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from legato.app import new_run_id
from legato.client import Client
from legato.store import NewRun, Store, open_store
from tests.flows.flow_control import app
from tests.helpers import cli_json, run_cli, wait_for, worker_process

APP = "tests/flows/flow_control.py"
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def client(db_url: str) -> Iterator[Client]:
    """A client on the test database, with the test flows registered (as a worker would)."""
    store = open_store(db_url)
    app.use_store(store)
    app.register()
    yield Client(store)
    store.close()


def submit(client: Client, flow: str, params: dict[str, Any] | None = None, **kw: Any) -> str:
    run, _ = client.submit(flow, params or {}, **kw)
    return str(run["id"])


def statuses(store: Store, flow: str) -> dict[str, int]:
    rows = store._read(
        q("SELECT status, COUNT(*) AS n FROM runs WHERE flow = :flow GROUP BY status", store),
        {"flow": flow},
    )
    return {r["status"]: int(r["n"]) for r in rows}


def q(sql: str, store: Store) -> str:
    from legato.store.queries import render

    return render(sql, store.dialect)


class Sampler:
    """Samples, from the database, the most runs of a flow running at once (per key)."""

    def __init__(self, db_url: str, flow: str) -> None:
        self.store = open_store(db_url)
        self.flow = flow
        self.peak: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        sql = q("SELECT params FROM runs WHERE flow = :flow AND status = 'running'", self.store)
        while not self._stop.is_set():
            rows = self.store._read(sql, {"flow": self.flow})
            counts: dict[str, int] = {}
            for row in rows:
                counts["*"] = counts.get("*", 0) + 1
                cid = json.loads(row["params"]).get("customer_id")
                if cid is not None:
                    counts[cid] = counts.get(cid, 0) + 1
            for key, n in counts.items():
                self.peak[key] = max(self.peak.get(key, 0), n)
            self.samples += 1
            time.sleep(0.005)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.store.close()


@pytest.mark.timeout(180)
def test_flow_concurrency_holds_across_two_worker_processes(db_url: str, client: Client) -> None:
    ids = [submit(client, "capped", {"hold": 0.25}) for _ in range(24)]
    with (
        Sampler(db_url, "capped") as sampler,
        worker_process(APP, db_url, concurrency=8),
        worker_process(APP, db_url, concurrency=8),
    ):
        wait_for(
            lambda: statuses(client.store, "capped").get("succeeded") == len(ids),
            timeout=120,
            message="every capped run to finish",
        )
    assert sampler.samples > 20
    assert sampler.peak["*"] <= 3
    assert sampler.peak["*"] >= 2  # the limit is a cap, not a serialisation


@pytest.mark.timeout(120)
def test_per_key_limit_caps_one_key_while_another_proceeds(
    db_url: str, client: Client, tmp_path: Path
) -> None:
    d = str(tmp_path)
    a_runs = [
        submit(client, "per_customer", {"customer_id": "a", "directory": d}) for _ in range(4)
    ]
    b_runs = [
        submit(client, "per_customer", {"customer_id": "b", "directory": d}) for _ in range(3)
    ]
    with Sampler(db_url, "per_customer") as sampler, worker_process(APP, db_url, concurrency=8):
        wait_for(lambda: client.run(a_runs[0])["status"] == "running", timeout=60)
        (tmp_path / "release-b").write_text("go")
        wait_for(
            lambda: all(client.run(r)["status"] == "succeeded" for r in b_runs),
            timeout=60,
            message="key b's runs to finish while key a is capped",
        )
        a_states = [client.run(r)["status"] for r in a_runs]
        assert a_states.count("running") == 1 and a_states.count("queued") == 3
        waiting = client.run(a_runs[1])["waiting"]
        assert waiting["reason"] == "limit"
        assert waiting["limit"] == "flow:per_customer:concurrency" and waiting["key"] == "a"
        assert waiting["holders"] == [a_runs[0]]
        (tmp_path / "release-a").write_text("go")
        wait_for(lambda: all(client.run(r)["status"] == "succeeded" for r in a_runs), timeout=60)
    assert sampler.peak["a"] == 1 and sampler.peak["b"] == 1


@pytest.mark.timeout(120)
def test_named_limit_is_sized_by_the_cli_and_shared(
    db_url: str, client: Client, tmp_path: Path
) -> None:
    result = run_cli(["limits", "set", "warehouse-db", "2"], db_url)
    assert result.returncode == 0, result.stderr
    ids = [submit(client, "warehouse", {"directory": str(tmp_path)}) for _ in range(5)]
    with worker_process(APP, db_url, concurrency=8):
        wait_for(lambda: statuses(client.store, "warehouse").get("running") == 2, timeout=60)
        time.sleep(0.5)  # give a wrongly admitted third run the time to show up
        assert statuses(client.store, "warehouse").get("running") == 2
        limits = {item["name"]: item for item in cli_json(["limits", "list"], db_url)}
        assert limits["warehouse-db"]["concurrency"] == 2
        assert limits["warehouse-db"]["running"] == 2
        shown = cli_json(["flows", "show", "warehouse"], db_url)
        assert shown["flow_control"] == {"flow": "warehouse", "limits": ["warehouse-db"]}
        waiting = client.run(ids[4])["waiting"]
        assert waiting["reason"] == "limit" and waiting["held"] == 2 and waiting["size"] == 2
        assert "limit 'warehouse-db': 2/2 held by run(s)" in waiting["message"]
        (tmp_path / "release").write_text("go")
        wait_for(lambda: statuses(client.store, "warehouse").get("succeeded") == 5, timeout=60)


@pytest.mark.timeout(120)
def test_high_priority_run_starts_before_a_thousand_queued_low_ones(
    db_url: str, client: Client
) -> None:
    store = client.store
    store.create_runs(
        [
            NewRun(id=new_run_id(), flow="prioritised", params=f'{{"i": {i}}}', queue="prio")
            for i in range(1000)
        ]
    )
    high = submit(client, "prioritised", {"i": -1}, priority=10)
    with worker_process(APP, db_url, concurrency=1, queues=["prio"]):
        wait_for(lambda: client.run(high)["status"] == "succeeded", timeout=60)
        rows = store._read(
            q("SELECT id, started_at, finished_at FROM runs WHERE queue = 'prio'", store)
        )
    ran = {r["id"]: r for r in rows}
    low = [r for r in rows if r["id"] != high and r["started_at"] is not None]
    assert ran[high]["started_at"] <= min((r["started_at"] for r in low), default=2**62)
    assert ran[high]["finished_at"] <= min(
        (r["finished_at"] for r in low if r["finished_at"]), default=2**62
    )


def test_priority_ages_so_low_priority_runs_are_not_starved(client: Client) -> None:
    store = client.store
    now = store.now_ms()
    old_low, _ = store.create_run(
        NewRun(
            id=new_run_id(), flow="prioritised", params="{}", queue="age", at_ms=now - 11 * 60_000
        )
    )
    fresh_high, _ = store.create_run(
        NewRun(id=new_run_id(), flow="prioritised", params="{}", queue="age", priority=10)
    )
    # Waiting 11 minutes is worth 11 priority points: the old low-priority run goes first.
    first = store.claim("w", ["age"], 1, 60_000)
    assert [r.id for r in first] == [old_low["id"]]
    assert [r.id for r in store.claim("w", ["age"], 1, 60_000)] == [fresh_high["id"]]


@pytest.mark.timeout(180)
def test_strict_queue_starts_runs_one_at_a_time_in_submission_order(
    db_url: str, client: Client, tmp_path: Path
) -> None:
    result = run_cli(["queues", "set", "fifo", "--strict"], db_url)
    assert result.returncode == 0, result.stderr
    ids = [submit(client, "ordered", {"i": i, "directory": str(tmp_path)}) for i in range(200)]
    with (
        worker_process(APP, db_url, concurrency=4, queues=["fifo"]),
        worker_process(APP, db_url, concurrency=4, queues=["fifo"]),
    ):
        wait_for(
            lambda: statuses(client.store, "ordered").get("succeeded") == 200,
            timeout=150,
            message="the 200 runs of the strict queue",
        )
    rows = client.store._read(
        q(
            "SELECT id, started_at, finished_at, worker_id FROM runs WHERE flow = 'ordered'",
            client.store,
        )
    )
    by_id = {r["id"]: r for r in rows}
    runs = [by_id[i] for i in ids]
    for before, after in itertools.pairwise(runs):
        assert after["started_at"] >= before["finished_at"], "two runs of a strict queue overlapped"
    assert (tmp_path / "order").read_text().split() == [str(i) for i in range(200)]


@pytest.mark.timeout(120)
def test_paused_queue_holds_its_runs_until_resumed(db_url: str, client: Client) -> None:
    assert run_cli(["queues", "pause", "paused-q"], db_url).returncode == 0
    run_id = submit(client, "pausable")
    with worker_process(APP, db_url, queues=["paused-q"]):
        wait_for(lambda: client.run(run_id)["waiting"]["reason"] == "queue_paused", timeout=30)
        time.sleep(0.5)
        assert client.run(run_id)["status"] == "queued"
        queues = {item["name"]: item for item in cli_json(["queues", "list"], db_url)}
        assert queues["paused-q"]["paused"] is True
        assert run_cli(["queues", "resume", "paused-q"], db_url).returncode == 0
        wait_for(lambda: client.run(run_id)["status"] == "succeeded", timeout=30)
    assert client.run(run_id)["waiting"] is None


@pytest.mark.timeout(150)
def test_poison_run_fails_after_its_max_recoveries(
    db_url: str, client: Client, tmp_path: Path
) -> None:
    run_id = submit(client, "poison", {"directory": str(tmp_path)})
    starts = tmp_path / "poison-starts"

    def started(n: int) -> bool:
        return starts.exists() and len(starts.read_text().split()) >= n

    for n in (1, 2):  # max_recoveries=1: killed once and recovered, killed again: poison
        with worker_process(APP, db_url) as worker:
            wait_for(lambda n=n: started(n), timeout=60, message=f"start #{n} of the run")
            worker.kill()  # kill -9 while the run is running
    with worker_process(APP, db_url):
        wait_for(lambda: client.run(run_id)["status"] == "failed", timeout=60)
        time.sleep(0.5)
    run = client.run(run_id)
    assert run["error"].startswith("PoisonRun:")
    assert "recovered 1 times" in run["error"]
    assert run["recoveries"] == 1
    assert len(starts.read_text().split()) == 2  # never started a third time


def test_queue_concurrency_limit_and_pause_in_the_claim(client: Client) -> None:
    store = client.store
    client.set_queue("bounded", concurrency=2)
    for i in range(5):
        store.create_run(
            NewRun(id=new_run_id(), flow="prioritised", params=f'{{"i": {i}}}', queue="bounded")
        )
    assert store.claim("w1", ["bounded"], 10, 60_000) == []  # not through the plain claim
    first = store.claim_gated("w1", ["bounded"], 10, 60_000)
    assert len(first) == 2
    assert store.claim_gated("w2", ["bounded"], 10, 60_000) == []  # 2/2 running
    assert store.finish_run(first[0].id, first[0].token, "succeeded")
    assert len(store.claim_gated("w2", ["bounded"], 10, 60_000)) == 1
    client.set_queue("bounded", paused=True)
    assert store.finish_run(first[1].id, first[1].token, "succeeded")
    assert store.claim_gated("w2", ["bounded"], 10, 60_000) == []  # paused
    client.set_queue("bounded", paused=False, concurrency=None)
    # Without settings the queue is plain again: the ordinary claim takes the rest.
    assert len(store.claim("w3", ["bounded"], 10, 60_000)) == 2


def test_rate_limit_and_key_parsing() -> None:
    from legato.errors import ConfigurationError
    from legato.limits import FlowControl, RateLimit, key_value

    assert RateLimit.coerce("10/s") == RateLimit(10, 1.0)
    assert RateLimit.coerce("100/5m") == RateLimit(100, 300.0)
    assert RateLimit.coerce((3, 2)) == RateLimit(3, 2.0)
    with pytest.raises(ConfigurationError):
        RateLimit.coerce("ten per second")
    assert key_value("customer.id", {"customer": {"id": 7}}) == "7"
    assert key_value(lambda p: p["a"] + "-x", {"a": "k"}) == "k-x"
    control = FlowControl(flow="f", concurrency=2, concurrency_key="c", limits=("db",))
    assert control.keys({"c": "k1"}) == [("flow:f:concurrency", "k1"), ("db", "")]
    with pytest.raises(ConfigurationError):
        FlowControl(flow="f", concurrency_key="c")  # a key needs a size
