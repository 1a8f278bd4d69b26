"""Bad input: one ``error: …`` line on stderr, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from legato.loader import load_app
from tests.acceptance.support import APP, Cluster, assert_one_error_line, submit
from tests.helpers import cli_json, run_cli

pytestmark = pytest.mark.timeout(180)

UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"

# (arguments, fragments the message must contain, extra environment)
BAD_COMMANDS: list[tuple[list[str], list[str], dict[str, str]]] = [
    (["submit", "no_such_flow"], ["unknown flow", "no_such_flow"], {}),
    (["submit", "two_steps", "--params", "{x: 1"], ["invalid JSON", "--params"], {}),
    (["submit", "two_steps", "--params", "[1, 2]"], ["JSON object"], {}),
    (["submit", "two_steps", "--param", "x=1", "--param", "bogus=2"], ["bogus"], {}),
    (["submit", "two_steps", "--param", "label=a"], ["needs parameter", "'x'"], {}),
    (["submit", "two_steps", "--param", "novalue"], ["novalue"], {}),
    (["submit", "two_steps", "--param", "x=1", "--in", "soon"], ["duration", "soon"], {}),
    (["submit", "two_steps", "--param", "x=1", "--at", "next tuesday"], ["next tuesday"], {}),
    (
        ["submit", "two_steps", "--param", "x=1", "--param", "label=" + "y" * 300],
        ["limit"],
        {"LEGATO_MAX_PAYLOAD_BYTES": "128"},
    ),
    (["runs", "show", UNKNOWN_RUN], [UNKNOWN_RUN], {}),
    (["runs", "show", UNKNOWN_RUN, "--json"], [UNKNOWN_RUN], {}),
    (["runs", "cancel", UNKNOWN_RUN], [UNKNOWN_RUN], {}),
    (["runs", "retry", UNKNOWN_RUN], [UNKNOWN_RUN], {}),
    (["logs", UNKNOWN_RUN], [UNKNOWN_RUN], {}),
    (["logs", UNKNOWN_RUN, "--json"], [UNKNOWN_RUN], {}),
    (["runs", "list", "--status", "nope"], ["nope"], {}),
]


def test_bad_input_fails_with_one_line_and_writes_nothing(cluster: Cluster) -> None:
    db = cluster.db_url
    # Register the flows as a worker does at start (no worker needed to submit).
    app = load_app(APP)
    app.use_store(cluster.store)
    app.register()

    # The commands are independent and read-only: run a few at a time to save wall time.
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda cmd: run_cli(cmd[0], db, env=cmd[2]), BAD_COMMANDS))
    problems = []
    for (args, fragments, _env), result in zip(BAD_COMMANDS, results, strict=True):
        try:
            assert_one_error_line(result, *fragments)
            assert result.stdout == "", result.stdout
        except AssertionError as exc:
            problems.append(f"legato {' '.join(args)[:80]}: {exc}")
    assert not problems, "\n".join(problems)
    assert cli_json(["runs", "list"], db) == []

    # The same idempotency key twice: one run, the same id printed both times.
    key = ["--idempotency-key", "order-42", "--in", "1h"]
    first = submit(db, "two_steps", "--param", "x=1", *key)
    assert submit(db, "two_steps", "--param", "x=1", *key) == first
    runs = cli_json(["runs", "list"], db)
    assert [(r["id"], r["status"]) for r in runs] == [(first, "scheduled")]

    # Only a finished run can be retried.
    assert_one_error_line(run_cli(["runs", "retry", first], db), first, "scheduled")
    assert [r["id"] for r in cli_json(["runs", "list"], db)] == [first]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql://postgres@127.0.0.1:1/x", "cannot connect"),
        ("mysql://root@127.0.0.1/x", "unsupported database URL"),
        ("sqlite:///", "invalid SQLite URL"),
    ],
    ids=["unreachable", "unsupported-scheme", "no-path"],
)
@pytest.mark.parametrize(
    "args",
    [["runs", "list", "--json"], ["submit", "two_steps", "--param", "x=1"]],
    ids=["runs-list", "submit"],
)
def test_bad_database_url_fails_with_one_line(url: str, fragment: str, args: list[str]) -> None:
    assert_one_error_line(run_cli(args, url), fragment)


@pytest.mark.parametrize(
    "args",
    [["runs", "show"], ["runs", "list", "--bogus"], ["nosuch"]],
    ids=["missing-argument", "bad-option", "unknown-command"],
)
def test_usage_errors_fail_with_one_line(sqlite_url: str, args: list[str]) -> None:
    assert_one_error_line(run_cli(args, sqlite_url))
