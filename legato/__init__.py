"""Legato: a durable job orchestrator for Python.

Define flows and steps on an :class:`App`, submit runs, and let workers execute them with
retries, timeouts and crash recovery on SQLite or PostgreSQL.
"""

from __future__ import annotations

from .app import App, BoundFlow, Flow, RunHandle, Step
from .config import Settings
from .context import RunContext, in_run
from .durable import gather, sleep, sleep_until
from .errors import (
    Cancelled,
    DatabaseUnavailable,
    FlowTimeout,
    LeaseLost,
    LegatoError,
    NonDeterminismError,
    PayloadTooLarge,
    RunCancelled,
    RunFailed,
    RunInterrupted,
    SerializationError,
    StepTimeout,
    UnknownFlow,
    UnknownRun,
)
from .retry import RetryPolicy
from .schedules import Schedule, cron, every, once
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "BoundFlow",
    "Cancelled",
    "DatabaseUnavailable",
    "Flow",
    "FlowTimeout",
    "LeaseLost",
    "LegatoError",
    "NonDeterminismError",
    "PayloadTooLarge",
    "RetryPolicy",
    "RunCancelled",
    "RunContext",
    "RunFailed",
    "RunHandle",
    "RunInterrupted",
    "Schedule",
    "SerializationError",
    "Settings",
    "Step",
    "StepTimeout",
    "UnknownFlow",
    "UnknownRun",
    "Worker",
    "__version__",
    "cron",
    "every",
    "gather",
    "in_run",
    "once",
    "sleep",
    "sleep_until",
]
