"""Capture of ``logging`` records and ``print`` output inside runs, line by line.

A handler on the root logger and proxies on ``sys.stdout``/``sys.stderr`` look at the
current run context: output produced inside a run is buffered as :class:`LogLine` s (with the
run, step and attempt) and written in batches by :class:`LogWriter`; output produced
elsewhere goes where it always went. ``print`` lines are recorded with level ``INFO``
(stdout) or ``WARNING`` (stderr).
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from dataclasses import replace
from typing import Any, TextIO

from .context import RunContext, current_run
from .serialization import storable_text
from .store import LogLine, Store

internal = logging.getLogger("legato.worker")


class LogWriter:
    """Buffers captured lines and writes them every ``interval`` seconds (and on demand).

    Lines are kept until they are written: a batch whose write fails for a database fault is
    put back and written again after a bounded, jittered backoff (the writes are fenced by
    the run's lease token, so lines of a run that another worker took meanwhile are dropped by
    the database). A batch refused for its content is written line by line, each line that
    cannot be stored as it is replaced by what can (NUL characters and lone surrogates
    replaced); its neighbours are never lost. A line longer than ``max_line_bytes`` is cut,
    with a note of its length.
    """

    #: Most lines kept while the database is unreachable; beyond, the oldest are dropped
    #: (and counted in the worker's log), so that an outage cannot exhaust memory.
    MAX_BUFFERED = 200_000

    def __init__(self, store: Store, interval: float, *, max_line_bytes: int = 64 * 1024) -> None:
        self.store = store
        self.interval = interval
        self.max_line_bytes = max_line_bytes
        self._pending: list[LogLine] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stopped = threading.Event()
        self._failures = 0
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="legato-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, ctx: RunContext, level: str, message: str) -> None:
        if len(message) * 4 > self.max_line_bytes:
            message = _cut(message, self.max_line_bytes)
        line = LogLine(
            ctx.run.id,
            ctx.run.token,
            int(time.time() * 1000),
            level,
            ctx.step_name,
            ctx.attempt,
            message,
        )
        with self._lock:
            self._pending.append(line)

    def has_pending(self) -> bool:
        return bool(self._pending)

    def flush(self, *, wait: bool = True) -> bool:
        """Write everything buffered so far (called at the end of every run that logged).

        Returns False when the lines are kept for later. Without ``wait``, nothing is tried
        while the writer waits out a database fault (a run's end is not held up by it).
        """
        if not wait and self._failures and time.monotonic() < self._retry_at:
            return False
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return True
            try:
                self.store.write_logs(batch)
            except Exception as exc:
                if self.store.is_transient(exc):
                    self._keep(batch, exc)
                    return False
                internal.error(
                    "could not write %d log lines, writing them one by one: %s", len(batch), exc
                )
                self._write_one_by_one(batch)
            if self._failures:
                internal.info("log lines written again after %d failed attempt(s)", self._failures)
            self._failures = 0
            return True

    def _keep(self, batch: list[LogLine], exc: BaseException) -> None:
        """Put a batch whose write failed back in front of the buffer, to retry later."""
        if self._failures == 0:
            internal.warning(
                "could not write %d log lines, keeping them until the database is back: %s",
                len(batch),
                exc,
            )
        self._retry_at = time.monotonic() + self.store.settings.backoff(self._failures)
        self._failures += 1
        with self._lock:
            self._pending = batch + self._pending
            excess = len(self._pending) - self.MAX_BUFFERED
            if excess > 0:
                del self._pending[:excess]
        if excess > 0:
            internal.error("dropped the %d oldest log lines kept during the outage", excess)

    def _write_one_by_one(self, batch: list[LogLine]) -> None:
        for line in batch:
            try:
                self.store.write_logs([line])
                continue
            except Exception:
                pass
            cleaned = replace(
                line,
                message=storable_text(line.message),
                step=None if line.step is None else storable_text(line.step),
            )
            try:
                self.store.write_logs([cleaned])
            except Exception as exc:
                internal.error("dropped a log line of run %s: %s", line.run_id, exc)

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            if self._pending and time.monotonic() >= self._retry_at:
                self.flush()

    def stop(self, grace: float = 5.0) -> None:
        """Stop the thread and write what is left, retrying for up to ``grace`` seconds."""
        self._stopped.set()
        deadline = time.monotonic() + grace
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(
                min(
                    self.store.settings.backoff(self._failures),
                    max(0.0, deadline - time.monotonic()),
                )
            )
        if self._pending:
            internal.error(
                "dropped %d log lines: the database stayed unreachable", len(self._pending)
            )


def _cut(message: str, limit: int) -> str:
    """A line over ``limit`` bytes (UTF-8), cut to fit with a note of its full length."""
    raw = message.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return message
    note = f" [… line cut: {len(raw)} bytes, over the {limit}-byte limit]"
    keep = max(0, limit - len(note.encode()))
    return raw[:keep].decode("utf-8", "ignore") + note


def _writer_of(ctx: RunContext, fallback: LogWriter) -> LogWriter | None:
    """Where a run's lines go: its worker's writer; else ``fallback`` if it writes to the
    run's store."""
    if ctx.log_writer is not None:
        return ctx.log_writer
    return fallback if fallback.store is ctx.store else None


class _CaptureHandler(logging.Handler):
    def __init__(self, writer: LogWriter) -> None:
        super().__init__(logging.NOTSET)
        self.writer = writer
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        ctx = current_run.get()
        if ctx is None:
            self._outside_run(record)
            return
        # Several workers in one process each install a handler: the record is captured
        # once, into the log writer of the worker running the run (which flushes it before
        # the attempt's outcome, while the lease holds).
        writer = _writer_of(ctx, self.writer)
        if writer is None or getattr(record, "_legato_captured", False):
            return
        record._legato_captured = True
        try:
            message = self.format(record)
            if record.name not in ("root", "legato.worker"):
                message = f"[{record.name}] {message}"
            for line in message.splitlines() or [""]:
                writer.add(ctx, record.levelname, line)
        except Exception:  # pragma: no cover - logging must never break a run
            self.handleError(record)

    def _outside_run(self, record: logging.LogRecord) -> None:
        """A record from outside any run goes where it would have gone without this handler.

        Other handlers on its way get it anyway; but when there are none, ``logging`` falls
        back to ``lastResort`` (warnings and errors on stderr) only if *no* handler was found,
        and this handler counts as one. Without this, installing the capture would silence
        every warning logged outside runs (e.g. by a database driver) in a worker process.
        """
        last_resort = logging.lastResort
        if last_resort is None or record.levelno < last_resort.level:
            return
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return
            logger = logger.parent if logger.propagate else None
        last_resort.handle(record)


class _StreamProxy(io.TextIOBase):
    """Stands in for stdout/stderr: lines written inside a run go to the run's log."""

    def __init__(self, original: TextIO, writer: LogWriter, level: str) -> None:
        self.original = original
        self.writer = writer
        self.level = level
        self._partial: dict[int, str] = {}

    def write(self, text: str) -> int:
        ctx = current_run.get()
        if ctx is None:
            return self.original.write(text)
        key = id(ctx)
        buffered = self._partial.pop(key, "") + text
        *lines, rest = buffered.split("\n")
        writer = _writer_of(ctx, self.writer) or self.writer
        for line in lines:
            writer.add(ctx, self.level, line)
        if rest:
            self._partial[key] = rest
        return len(text)

    def flush_context(self, ctx: RunContext) -> None:
        rest = self._partial.pop(id(ctx), None)
        if rest:
            (_writer_of(ctx, self.writer) or self.writer).add(ctx, self.level, rest)

    def flush(self) -> None:
        self.original.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return self.original.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


class Capture:
    """Installs and removes the capture for one worker."""

    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer
        self.handler = _CaptureHandler(writer)
        self._stdout: _StreamProxy | None = None
        self._stderr: _StreamProxy | None = None
        self._saved_level: int | None = None

    def install(self) -> None:
        root = logging.getLogger()
        root.addHandler(self.handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            self._saved_level = root.level
            root.setLevel(logging.INFO)
        self._stdout = _StreamProxy(sys.stdout, self.writer, "INFO")
        self._stderr = _StreamProxy(sys.stderr, self.writer, "WARNING")
        sys.stdout = self._stdout
        sys.stderr = self._stderr

    def end_of_run(self, ctx: RunContext) -> None:
        """Keep an unterminated last ``print`` line of a finished run."""
        for proxy in (self._stdout, self._stderr):
            if proxy is not None:
                proxy.flush_context(ctx)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        if self._saved_level is not None:
            logging.getLogger().setLevel(self._saved_level)
        if self._stdout is not None and sys.stdout is self._stdout:
            sys.stdout = self._stdout.original
        if self._stderr is not None and sys.stderr is self._stderr:
            sys.stderr = self._stderr.original
