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
from typing import Any, TextIO

from .context import RunContext, current_run
from .store import LogLine, Store

internal = logging.getLogger("legato.worker")


class LogWriter:
    """Buffers captured lines and writes them every ``interval`` seconds (and on demand)."""

    def __init__(self, store: Store, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._pending: list[LogLine] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="legato-logs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, ctx: RunContext, level: str, message: str) -> None:
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

    def flush(self) -> None:
        """Write everything buffered so far (called at the end of every run that logged)."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:
                try:
                    self.store.write_logs(batch)
                except Exception:
                    internal.exception("could not write %d log lines", len(batch))

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            if self._pending:
                self.flush()

    def stop(self) -> None:
        self._stopped.set()
        self.flush()


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
        # once, by a worker writing to the run's own store.
        if ctx.store is not self.writer.store or getattr(record, "_legato_captured", False):
            return
        record._legato_captured = True
        try:
            message = self.format(record)
            if record.name not in ("root", "legato.worker"):
                message = f"[{record.name}] {message}"
            for line in message.splitlines() or [""]:
                self.writer.add(ctx, record.levelname, line)
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
        for line in lines:
            self.writer.add(ctx, self.level, line)
        if rest:
            self._partial[key] = rest
        return len(text)

    def flush_context(self, ctx: RunContext) -> None:
        rest = self._partial.pop(id(ctx), None)
        if rest:
            self.writer.add(ctx, self.level, rest)

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
