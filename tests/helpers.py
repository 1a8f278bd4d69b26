"""Test helpers: polling for conditions, the CLI as a subprocess, real worker processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from legato import App, Worker

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
FLOWS = Path(__file__).resolve().parent / "flows"


def wait_for(
    condition: Callable[[], T], timeout: float = 15.0, interval: float = 0.02, message: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(interval)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str], db_url: str, *, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``legato ARGS --db URL`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "legato.cli", *args, "--db", db_url],
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=timeout,
        cwd=ROOT,
    )


def cli_json(args: Sequence[str], db_url: str, **kwargs: Any) -> Any:
    result = run_cli([*args, "--json"], db_url, **kwargs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class WorkerProcess:
    """A ``legato worker`` subprocess."""

    def __init__(
        self,
        app_spec: str,
        db_url: str,
        *,
        concurrency: int = 4,
        queues: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        args = [
            sys.executable,
            "-m",
            "legato.cli",
            "worker",
            app_spec,
            "--db",
            db_url,
            "--concurrency",
            str(concurrency),
        ]
        for q in queues:
            args += ["--queue", q]
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, env=cli_env(env), cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[union-attr]


@contextmanager
def worker_process(app_spec: str, db_url: str, **kwargs: Any) -> Iterator[WorkerProcess]:
    w = WorkerProcess(app_spec, db_url, **kwargs)
    try:
        yield w
    finally:
        w.close()


@contextmanager
def in_process_worker(app: App, **kwargs: Any) -> Iterator[Worker]:
    """Run a worker in a thread of the test process (no signal handlers)."""
    worker = Worker(app, **kwargs)
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    worker.started.wait(10)
    try:
        yield worker
    finally:
        worker.stop(force=True)
        thread.join(timeout=15)


def kill_process(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, message="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
