"""A run's life as users see it from the CLI: success, failure with retries, captured logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.support import (
    Cluster,
    assert_keys,
    lines,
    parse_utc,
    show,
    submit,
)
from tests.helpers import cli_json, run_cli, wait_for

pytestmark = pytest.mark.timeout(180)

# SPEC §3 "JSON shapes".
RUN_KEYS = (
    "id", "flow", "status", "params", "result", "error", "traceback", "attempts",
    "max_attempts", "queue", "trigger", "worker", "parent_id", "created_at", "scheduled_for",
    "started_at", "finished_at",
)  # fmt: skip
STEP_KEYS = ("name", "status", "attempts", "started_at", "finished_at", "error", "traceback")
WORKER_KEYS = (
    "id", "hostname", "pid", "queues", "concurrency", "running", "started_at",
    "last_heartbeat", "alive",
)  # fmt: skip
QUEUE_KEYS = ("name", "queued", "running", "workers")
LOG_KEYS = ("ts", "level", "step", "attempt", "message")


def test_two_step_flow_succeeds_and_read_commands_have_the_spec_shapes(cluster: Cluster) -> None:
    db = cluster.db_url
    worker = cluster.start_worker(concurrency=3)
    # The worker registered its flows when it started: the CLI can submit them by name.
    assert "two_steps" in {f["name"] for f in cli_json(["flows", "list"], db)}

    done = run_cli(
        ["submit", "two_steps", "--param", "x=21", "--param", "label=answer", "--wait"],
        db,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.split()[0]
    assert "succeeded" in done.stdout

    run = show(db, run_id)
    assert_keys(run, (*RUN_KEYS, "steps"), "runs show --json")
    assert run["id"] == run_id
    assert run["flow"] == "two_steps"
    assert run["status"] == "succeeded"
    assert run["params"] == {"x": 21, "label": "answer"}
    assert run["result"] == {"value": 42, "text": "answer=42"}
    assert run["error"] is None and run["traceback"] is None
    assert (run["attempts"], run["max_attempts"]) == (1, 1)
    assert (run["queue"], run["trigger"], run["parent_id"]) == ("default", "manual", None)
    assert f":{worker.pid}:" in run["worker"]
    created, started, finished = (
        parse_utc(run[k]) for k in ("created_at", "started_at", "finished_at")
    )
    assert created <= started <= finished

    steps = run["steps"]
    assert [s["name"] for s in steps] == ["double", "label_value"]
    previous = started
    for step in steps:
        assert_keys(step, STEP_KEYS, "a step of runs show --json")
        assert (step["status"], step["attempts"], step["error"]) == ("succeeded", 1, None)
        step_started, step_finished = parse_utc(step["started_at"]), parse_utc(step["finished_at"])
        assert previous <= step_started <= step_finished <= finished
        previous = step_finished

    listed = cli_json(["runs", "list"], db)
    assert [r["id"] for r in listed] == [run_id]
    assert_keys(listed[0], RUN_KEYS, "runs list --json")
    assert listed[0]["status"] == "succeeded"
    assert listed[0]["result"] == {"value": 42, "text": "answer=42"}

    flows = {f["name"]: f for f in cli_json(["flows", "list"], db)}
    assert {"two_steps", "doomed", "three_steps"} <= set(flows)
    two = flows["two_steps"]
    assert_keys(two, ("name", "description", "queue", "last_status", "next_fire_at"), "flows list")
    assert two["description"] == "Double a number, then label it"
    assert (two["queue"], two["last_status"], two["next_fire_at"]) == ("default", "succeeded", None)
    assert flows["doomed"]["last_status"] is None

    stats = cli_json(["stats", "--since", "10m"], db)
    assert_keys(stats, ("since", "until", "counts", "by_flow"), "stats --json")
    assert parse_utc(stats["since"]) < parse_utc(stats["until"])
    # The terminal statuses are always counted, 0 when no run ended that way.
    assert stats["counts"] == {"succeeded": 1, "failed": 0, "cancelled": 0}
    assert stats["by_flow"] == {"two_steps": {"succeeded": 1, "failed": 0, "cancelled": 0}}

    workers = cli_json(["workers", "list"], db)
    assert len(workers) == 1
    w = workers[0]
    assert_keys(w, WORKER_KEYS, "workers list --json")
    assert (w["pid"], w["queues"], w["concurrency"], w["alive"]) == (
        worker.pid, ["default"], 3, True,
    )  # fmt: skip
    assert w["id"] == run["worker"]
    assert isinstance(w["hostname"], str) and w["hostname"]
    assert w["running"] == 0
    assert parse_utc(w["started_at"]) <= parse_utc(w["last_heartbeat"])

    queues = cli_json(["queues", "list"], db)
    assert [q["name"] for q in queues] == ["default"]
    assert_keys(queues[0], QUEUE_KEYS, "queues list --json")
    assert (queues[0]["queued"], queues[0]["running"], queues[0]["workers"]) == (0, 0, [w["id"]])


def test_failing_step_is_retried_then_the_run_fails_saying_where_and_why(
    cluster: Cluster, tmp_path: Path
) -> None:
    """``doomed``: 3 run attempts (flow policy); its ``explode`` step tries twice per attempt."""
    db = cluster.db_url
    cluster.start_worker()
    done = run_cli(
        ["submit", "doomed", "--param", f"directory={tmp_path}", "--wait"], db, timeout=120
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ValueError: bad row 17" in done.stdout
    run = show(db, done.stdout.split()[0])

    assert run["status"] == "failed"
    assert run["attempts"] == run["max_attempts"] == 3
    assert run["error"] == "ValueError: bad row 17"
    assert run["failed_step"] == "explode"
    assert run["traceback"].startswith("Traceback (most recent call last):")
    assert ", in explode\n" in run["traceback"]
    assert run["traceback"].rstrip().endswith("ValueError: bad row 17")
    assert run["result"] is None
    parse_utc(run["finished_at"])

    prepare, explode = run["steps"]
    # The succeeded step ran once and was replayed on the later attempts.
    assert (prepare["name"], prepare["status"], prepare["attempts"]) == ("prepare", "succeeded", 1)
    assert len(lines(tmp_path / "prepare")) == 1
    # The failing step: 2 tries in each of the 3 run attempts, each one recorded.
    assert (explode["name"], explode["status"]) == ("explode", "failed")
    assert explode["attempts"] == len(lines(tmp_path / "explode")) == 6
    assert explode["error"] == "ValueError: bad row 17"
    assert ", in explode\n" in explode["traceback"]
    # One claim per attempt, one terminal event.
    statuses = [e["status"] for e in run["events"]]
    assert statuses.count("running") == 3
    assert statuses[-1] == "failed" and statuses.count("failed") == 1

    assert cli_json(["stats"], db)["counts"] == {"succeeded": 0, "failed": 1, "cancelled": 0}


def _one(entries: list[dict[str, Any]], text: str) -> dict[str, Any]:
    found = [e for e in entries if e["message"].endswith(text)]
    assert len(found) == 1, f"{text!r} in {[e['message'] for e in entries]}"
    return found[0]


def test_logging_and_print_are_captured_per_step_and_visible_while_running(
    cluster: Cluster, tmp_path: Path
) -> None:
    db = cluster.db_url
    worker = cluster.start_worker()
    run_id = submit(db, "chatty", "--param", f"directory={tmp_path}")
    wait_for(lambda: (tmp_path / "talking").exists(), timeout=60, message="step talk to start")

    # The step is blocked until we create the release file: its lines are visible already.
    def captured() -> list[dict[str, Any]] | None:
        entries: list[dict[str, Any]] = cli_json(["logs", run_id], db)
        return entries if len(entries) >= 5 else None

    live = wait_for(captured, timeout=60, interval=0.1, message="log lines of the running run")
    assert cluster.status(run_id) == "running"
    assert [e["message"].split("] ")[-1] for e in live] == [
        "flow body starts",
        "hello from talk",
        "careful in talk",
        "printed by talk",
        "printed to stderr by talk",
    ]
    human = run_cli(["logs", run_id], db)
    assert human.returncode == 0 and "hello from talk" in human.stdout, human.stderr

    (tmp_path / "release").touch()
    assert cluster.wait_finished(run_id) == "succeeded"
    entries = cli_json(["logs", run_id], db)
    for entry in entries:
        assert_keys(entry, LOG_KEYS, "logs --json")
        parse_utc(entry["ts"])
        assert entry["attempt"] == 1
    expected = [
        ("flow body starts", "INFO", None),
        ("hello from talk", "INFO", "talk"),
        ("careful in talk", "WARNING", "talk"),
        ("printed by talk", "INFO", "talk"),
        ("printed to stderr by talk", "WARNING", "talk"),
        ("talk was released", "ERROR", "talk"),
        ("flow body ends", "INFO", None),
    ]
    assert len(entries) == len(expected)
    for (text, level, step), entry in zip(expected, entries, strict=True):
        assert _one(entries, text) is entry
        assert (entry["level"], entry["step"]) == (level, step), entry
    assert "acceptance.talk" in _one(entries, "careful in talk")["message"]
    times = [parse_utc(e["ts"]) for e in entries]
    assert times == sorted(times)
    # A record logged outside any run (by a thread the step started) is not in the run's log
    # but on the worker's stderr, as it would be without Legato.
    assert "outside any run" in worker.output()
