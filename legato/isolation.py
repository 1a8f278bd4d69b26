"""Process isolation: each attempt of an ``isolation="process"`` flow runs in a child process.

The worker's run thread starts ``python -m legato.isolation`` and hands it, as JSON on its
standard input, where the flow's code lives (module and file), the database URL and the
claimed run (with its lease token). The child imports the module, finds the flow, runs the
attempt with durable steps and log capture written straight to the database (fenced by the
same lease token), and answers with one JSON object on a pipe of its own. Nothing is pickled:
stored data only ever travels as JSON.

The worker keeps the lease alive meanwhile and stays in charge:

- past the flow's ``timeout`` it kills the child (``SIGKILL``): the attempt fails with
  ``FlowTimeout``, whatever the code was doing;
- a child that dies without answering (``os._exit``, a segfault, the kernel's OOM killer)
  fails that attempt only, with :class:`ChildProcessDied`; the worker goes on serving;
- a cancel request is passed on as ``SIGTERM`` (the child stops at its next step boundary,
  as a thread would); a lost lease kills the child;
- ``memory_limit=MB`` caps the child's address space (``RLIMIT_AS``) just before the flow
  runs: allocating past it raises ``MemoryError`` in the flow.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Cancelled, DatabaseUnavailable, LeaseLost, RunInterrupted, Suspend

if TYPE_CHECKING:
    from .app import App, Flow
    from .context import RunContext

POLL_SECONDS = 0.05


class ChildProcessDied(ChildProcessError):
    """The child process running an attempt ended without an answer (crash, kill, OOM)."""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


# -- worker side ------------------------------------------------------------------------------


def run_in_child(
    flow: Flow[Any, Any],
    ctx: RunContext,
    database_url: str,
    max_payload_bytes: int,
) -> dict[str, Any]:
    """Run one attempt in a child process; returns the child's answer.

    Answers: ``{"kind": "ok", "result": json}``, ``{"kind": "error", "error", "traceback",
    "failed_step", "retryable"}``, ``{"kind": "suspend", "wake_ms"}``, ``{"kind":
    "cancelled"}``, ``{"kind": "lost"}``, or, decided here, ``{"kind": "timeout"}`` and
    ``{"kind": "died", "error"}``.
    """
    module = inspect.getmodule(flow.fn)
    spec = {
        "module": getattr(module, "__name__", flow.fn.__module__),
        "file": inspect.getfile(flow.fn),
        "flow": flow.name,
        "database_url": database_url,
        "run": asdict(ctx.run),
        "max_payload_bytes": max_payload_bytes,
        "memory_limit_mb": flow.control.memory_limit_mb,
        "sys_path": sys.path,
    }
    read_fd, write_fd = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "legato.isolation", str(write_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            start_new_session=True,  # a Ctrl-C of the worker's terminal is the worker's
        )
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    os.close(write_fd)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(read_fd, chunks), daemon=True)
    reader.start()
    assert child.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        child.stdin.write(json.dumps(spec).encode())
        child.stdin.close()
    deadline = None if flow.timeout is None else time.monotonic() + flow.timeout
    cancel_sent = False
    while True:
        try:
            child.wait(POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            pass
        if ctx.lost:
            _kill(child)
            return {"kind": "lost"}
        if deadline is not None and time.monotonic() >= deadline:
            _kill(child)
            return {"kind": "timeout"}
        if ctx.cancel_requested.is_set() and not cancel_sent:
            cancel_sent = True
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
    reader.join(timeout=5)
    raw = b"".join(chunks).decode(errors="replace").strip()
    if raw:
        try:
            answer: dict[str, Any] = json.loads(raw)
            return answer
        except ValueError:
            pass
    return {
        "kind": "died",
        "error": f"ChildProcessDied: the process running flow {flow.name!r} "
        f"{describe_exit(child.returncode)} before it answered",
    }


def _drain(fd: int, chunks: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as f:
        chunks.append(f.read())


def _kill(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(10)


# -- child side -------------------------------------------------------------------------------


def _find_flow(spec: dict[str, Any]) -> tuple[App, Flow[Any, Any]]:
    from .app import App

    sys.path[:] = list(spec["sys_path"])
    module: Any = None
    name = spec["module"]
    if name and name != "__main__":
        module = sys.modules.get(name)
        if module is None:
            try:
                module = importlib.import_module(name)
            except ImportError:
                module = None
    if module is None:
        path = Path(spec["file"])
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    for value in vars(module).values():
        if isinstance(value, App) and spec["flow"] in value.flows:
            return value, value.flows[spec["flow"]]
    raise LookupError(f"flow {spec['flow']!r} not found in module {name!r}")


def _limit_memory(megabytes: int | None) -> None:
    if megabytes is None:
        return
    import resource

    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def child_main(answer_fd: int) -> int:
    """Run the attempt described on stdin; write the answer to ``answer_fd``."""
    from . import serialization
    from .context import RunContext, current_run, describe_error, format_traceback
    from .interrupt import Interrupter
    from .logcapture import Capture, LogWriter
    from .store import open_store
    from .store.records import ClaimedRun

    spec = json.loads(sys.stdin.read())
    answer: dict[str, Any]
    store = open_store(spec["database_url"], migrate=False, pool_size=2)
    writer = LogWriter(store, 0.2, max_line_bytes=store.settings.max_log_line_bytes)
    capture = Capture(writer)
    try:
        _app, flow = _find_flow(spec)
        run = ClaimedRun(**spec["run"])
        ctx = RunContext(
            store, run, interrupter=Interrupter(), max_payload_bytes=spec["max_payload_bytes"]
        )
        ctx.log_writer = writer
        signal.signal(signal.SIGTERM, lambda _s, _f: ctx.cancel_requested.set())
        writer.start()
        capture.install()
        token = current_run.set(ctx)
        try:
            params = flow.decode_params(serialization.loads(run.params))
            _limit_memory(spec["memory_limit_mb"])
            value = flow.fn(**params)
            if inspect.iscoroutine(value):
                import asyncio

                value = asyncio.run(value)
            answer = {
                "kind": "ok",
                "result": serialization.dumps(
                    value,
                    what=f"result of flow {flow.name!r}",
                    limit=spec["max_payload_bytes"],
                ),
            }
        except Cancelled:
            answer = {"kind": "cancelled"}
        except Suspend as suspend:
            answer = {"kind": "suspend", "wake_ms": suspend.wake_ms}
        except LeaseLost:
            answer = {"kind": "lost"}
        except RunInterrupted:
            answer = {"kind": "handback"}
        except BaseException as exc:
            if isinstance(exc, DatabaseUnavailable) and exc.url == store.url.raw:
                # Legato's own database failed under the run's code: not the run's error.
                answer = {"kind": "handback"}
            else:
                answer = {
                    "kind": "error",
                    "error": describe_error(exc),
                    "traceback": format_traceback(exc),
                    "failed_step": ctx.failed_step if exc is ctx.failed_exc else None,
                    "retryable": flow.retry.should_retry(exc, run.attempt),
                }
        finally:
            current_run.reset(token)
        capture.end_of_run(ctx)
    except BaseException as exc:  # the flow could not even be loaded
        answer = {
            "kind": "error",
            "error": describe_error(exc),
            "traceback": format_traceback(exc),
            "failed_step": None,
            "retryable": False,
        }
    finally:
        with contextlib.suppress(Exception):
            writer.stop(grace=store.settings.lease_seconds)
    with os.fdopen(answer_fd, "w") as out:
        out.write(json.dumps(answer))
    os._exit(0)  # skip interpreter teardown (threads, pools): the answer is written


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1])))
