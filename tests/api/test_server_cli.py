"""``legato server`` as a real process: closed by default beyond loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from legato.client import Client
from legato.store import Store
from tests.helpers import ROOT, cli_env, run_cli, wait_for

from .conftest import free_port

START = 60.0  # seconds for a server process to answer (the machine is shared)


@contextmanager
def server_process(args: list[str], db_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "legato.cli", *args, "--db", db_url],
            env=cli_env(),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def answers(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "the server exited"
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_an_exposed_server_refuses_to_start_without_a_token(db_url: str, store: Store) -> None:
    result = run_cli(["server", "--host", "0.0.0.0", "--port", str(free_port())], db_url)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: refusing to serve the API on 0.0.0.0")
    assert "legato tokens create" in lines[0] and "--insecure" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_legato_up_refuses_the_same_way(db_url: str, store: Store) -> None:
    port = str(free_port())
    result = run_cli(
        ["up", "tests/flows/acceptance.py", "--host", "0.0.0.0", "--port", port], db_url
    )
    assert result.returncode != 0
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "refusing to serve the API" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_an_exposed_server_starts_with_insecure_and_says_so(
    db_url: str, store: Store, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    args = ["server", "--host", "0.0.0.0", "--port", str(port), "--insecure"]
    with server_process(args, db_url, log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{base}/healthz", proc), timeout=START, interval=0.1)
        assert httpx.get(f"{base}/api/v1/runs").status_code == 200  # open, as asked
    assert "INSECURE" in log.read_text()


def test_an_exposed_server_starts_once_a_token_exists(
    db_url: str, store: Store, tmp_path: Path
) -> None:
    token = Client(store).create_token("ops", "viewer")["token"]
    port = free_port()
    args = ["server", "--host", "0.0.0.0", "--port", str(port)]
    with server_process(args, db_url, tmp_path / "server.log") as proc:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{base}/readyz", proc), timeout=START, interval=0.1)
        assert httpx.get(f"{base}/api/v1/runs").status_code == 401
        assert httpx.get(f"{base}/metrics").status_code == 401
        authorized = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/api/v1/runs", headers=authorized).status_code == 200
        assert httpx.get(f"{base}/metrics", headers=authorized).status_code == 200
    assert token not in (tmp_path / "server.log").read_text()


def test_a_loopback_server_starts_without_tokens(db_url: str, store: Store, tmp_path: Path) -> None:
    port = free_port()
    with server_process(["server", "--port", str(port)], db_url, tmp_path / "s.log") as proc:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{base}/healthz", proc), timeout=START, interval=0.1)
        assert httpx.get(f"{base}/api/v1/flows").status_code == 200


def test_a_port_in_use_is_one_error_line(db_url: str, store: Store) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["server", "--port", str(port)], db_url)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot serve the API on 127.0.0.1:{port}: Address already in use"
    ]


def test_legato_up_serves_the_api_and_runs_what_it_submits(
    db_url: str, store: Store, tmp_path: Path
) -> None:
    port = free_port()
    args = ["up", "tests/flows/acceptance.py", "--port", str(port), "--concurrency", "2"]
    with server_process(args, db_url, tmp_path / "up.log") as proc:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{base}/readyz", proc), timeout=START, interval=0.1)
        body = {"flow": "two_steps", "params": {"x": 21, "label": "answer"}}
        run = httpx.post(f"{base}/api/v1/runs", json=body).json()

        def finished() -> dict[str, object] | None:
            got: dict[str, object] = httpx.get(f"{base}/api/v1/runs/{run['id']}").json()
            return got if got["status"] in ("succeeded", "failed") else None

        done = wait_for(finished, timeout=START, interval=0.1, message="the run to end")
        assert done["status"] == "succeeded", done
        assert done["result"] == {"value": 42, "text": "answer=42"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = run_cli(["up", "tests/flows/acceptance.py", "--port", str(busy)], db_url)
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: cannot serve the API on 127.0.0.1:{busy}: Address already in use"]
