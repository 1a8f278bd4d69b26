"""The engine in one process: durable steps, retries, timeouts, async, subflows, payloads."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter

import pytest

from legato import App, PayloadTooLarge, RetryPolicy, RunFailed, SerializationError
from legato.store import RunFilter
from tests.helpers import in_process_worker, wait_for

NO_WAIT = RetryPolicy(attempts=2, backoff="fixed", delay=0)


@dataclasses.dataclass
class Box:
    size: int


def test_succeeded_steps_are_replayed_not_rerun_on_retry(db_url: str) -> None:
    app = App(db_url)
    calls: Counter[str] = Counter()

    @app.step
    def first(x: int) -> Box:
        calls["first"] += 1
        return Box(x)

    @app.step
    def second(box: Box) -> int:
        calls["second"] += 1
        if calls["second"] == 1:
            raise ConnectionError("flaky")
        assert isinstance(box, Box)  # replayed results come back as the annotated type
        return box.size * 2

    @app.flow(retries=NO_WAIT)
    def pipeline(x: int) -> int:
        return second(first(x))

    with in_process_worker(app, concurrency=2):
        handle = pipeline.submit(21)
        assert handle.result(timeout=20) == 42
    info = handle.info()
    assert calls == {"first": 1, "second": 2}
    assert info["attempts"] == 2
    assert [(s["name"], s["status"], s["attempts"]) for s in info["steps"]] == [
        ("first", "succeeded", 1),
        ("second", "succeeded", 2),
    ]
    app.close()


def test_changed_step_order_fails_with_a_non_determinism_error(db_url: str) -> None:
    app = App(db_url)
    attempts: Counter[str] = Counter()

    @app.step
    def alpha() -> int:
        return 1

    @app.step
    def beta() -> int:
        return 2

    @app.flow(retries=RetryPolicy(attempts=3, backoff="fixed", delay=0))
    def moody() -> int:
        attempts["n"] += 1
        if attempts["n"] == 1:
            alpha()
            raise RuntimeError("first attempt fails after alpha")
        return beta()

    with in_process_worker(app):
        handle = moody.submit()
        with pytest.raises(RunFailed) as failure:
            handle.result(timeout=20)
    assert "NonDeterminismError" in str(failure.value.error)
    assert "'alpha'" in str(failure.value.error) and "'beta'" in str(failure.value.error)
    assert handle.info()["attempts"] == 2  # not retried further: it would fail the same way
    app.close()


def test_step_retries_in_place_and_step_timeout(db_url: str) -> None:
    app = App(db_url)
    tries: Counter[str] = Counter()

    @app.step(retries=RetryPolicy(attempts=3, backoff="fixed", delay=0.01))
    def flaky() -> str:
        tries["flaky"] += 1
        if tries["flaky"] < 3:
            raise ValueError("not yet")
        return "ok"

    @app.step(timeout=0.3)
    def spin() -> None:
        while True:
            pass

    @app.flow
    def uses_flaky() -> str:
        return flaky()

    @app.flow
    def uses_spin() -> None:
        spin()

    with in_process_worker(app):
        assert uses_flaky.submit().result(timeout=20) == "ok"
        stuck = uses_spin.submit()
        with pytest.raises(RunFailed) as failure:
            stuck.result(timeout=20)
    assert "StepTimeout" in str(failure.value.error)
    assert stuck.info()["failed_step"] == "spin"
    app.close()


def test_async_flows_and_steps(db_url: str) -> None:
    app = App(db_url)

    @app.step
    async def fetch(n: int) -> int:
        await asyncio.sleep(0.01)
        return n + 1

    @app.flow(timeout=5)
    async def gather_all(n: int) -> list[int]:
        return list(await asyncio.gather(*(fetch(i) for i in range(n))))

    @app.flow(timeout=0.3)
    async def too_slow() -> None:
        await asyncio.sleep(30)

    with in_process_worker(app):
        handle = gather_all.submit(3)
        slow = too_slow.submit()
        assert handle.result(timeout=20) == [1, 2, 3]
        with pytest.raises(RunFailed, match="FlowTimeout"):
            slow.result(timeout=20)
    assert len(handle.info()["steps"]) == 3
    app.close()


def test_subflows_record_their_parent_and_are_not_duplicated(db_url: str) -> None:
    app = App(db_url)

    @app.flow
    def child(i: int) -> int:
        return i * i

    @app.flow
    def parent(n: int) -> list[str]:
        return [child.submit(i).id for i in range(n)]

    with in_process_worker(app):
        handle = parent.submit(3)
        child_ids = handle.result(timeout=20)
        for cid in child_ids:
            wait_for(lambda cid=cid: app.get_run(cid).status() == "succeeded")
    runs = {r["id"]: r for r in app.store.list_runs(RunFilter())}
    assert len(runs) == 4
    for cid in child_ids:
        assert runs[cid]["parent_id"] == handle.id and runs[cid]["trigger"] == "subflow"
    app.close()


def test_bad_parameters_and_results_are_refused(db_url: str) -> None:
    from legato import Settings

    app = App(db_url, settings=Settings(max_payload_bytes=100))

    @app.flow
    def echo(value: object = None) -> object:
        return value

    @app.flow
    def unjsonable() -> object:
        return object()

    with pytest.raises(SerializationError):
        echo.submit(object())
    with pytest.raises(PayloadTooLarge):
        echo.submit("x" * 200)
    with pytest.raises(TypeError, match="flow 'echo'"):
        echo.submit(1, 2)
    assert app.store.list_runs(RunFilter()) == []
    with in_process_worker(app), pytest.raises(RunFailed, match="SerializationError"):
        unjsonable.submit().result(timeout=20)
    app.close()


def test_cancel_a_running_run_at_its_next_step(db_url: str) -> None:
    app = App(db_url)

    @app.step
    def tick(i: int) -> int:
        time.sleep(0.05)
        return i

    @app.flow
    def forever() -> None:
        for i in range(10_000):
            tick(i)

    with in_process_worker(app):
        handle = forever.submit()
        wait_for(lambda: len(app.store.get_steps(handle.id)) >= 2)
        assert handle.cancel() == "running"
        assert handle.wait(timeout=20) == "cancelled"
    app.close()


def test_idempotency_key_from_python(db_url: str) -> None:
    app = App(db_url)

    @app.flow
    def once(x: int) -> int:
        return x

    a = once.with_options(idempotency_key="order-1").submit(1)
    b = once.with_options(idempotency_key="order-1").submit(1)
    c = once.with_options(delay=3600).submit(2)
    assert a.id == b.id and c.status() == "scheduled"
    app.close()


def test_two_workers_in_one_process_record_each_log_line_once(db_url: str) -> None:
    app = App(db_url)

    @app.flow
    def chatty(n: int) -> int:
        logging.getLogger("chatty").warning("line %d", n)
        print("printed", n)
        return n

    with in_process_worker(app, concurrency=2), in_process_worker(app, concurrency=2):
        handles = [chatty.submit(n) for n in range(6)]
        assert [h.result(timeout=30) for h in handles] == list(range(6))
    for n, handle in enumerate(handles):
        messages = [line["message"] for line in app.store.get_logs(handle.id)]
        assert sorted(messages) == sorted([f"[chatty] line {n}", f"printed {n}"]), messages
    app.close()


def test_a_runs_lines_are_written_by_its_own_worker_before_its_outcome(db_url: str) -> None:
    """With two workers in one process, a line is captured by the worker running the run,
    which writes it before the run's outcome: it is there the moment the run has ended (here
    the periodic flush is an hour away), and never fenced out by a later attempt's token."""
    from legato import Settings

    app = App(db_url, settings=Settings.from_env(log_flush_seconds=3600))

    @app.flow(queue="b")
    def chatty(n: int) -> int:
        logging.getLogger("chatty").warning("line %d", n)
        print("printed", n)
        return n

    with (
        in_process_worker(app, concurrency=2, queues=["a"]),
        in_process_worker(app, concurrency=2, queues=["b"]),
    ):
        handle = chatty.submit(7)
        assert handle.result(timeout=30) == 7
        messages = [line["message"] for line in app.store.get_logs(handle.id)]
        assert sorted(messages) == ["[chatty] line 7", "printed 7"], messages
    app.close()
