"""Exceptions raised by Legato's public API."""

from __future__ import annotations


class LegatoError(Exception):
    """Base class of every error Legato raises on purpose."""


class ConfigurationError(LegatoError):
    """A setting, URL or application reference is invalid."""


class DatabaseUnavailable(LegatoError):
    """The database cannot be reached or is not usable.

    Raised instead of the driver's own error (psycopg, sqlite3) when a connection fails, is
    cut, times out or the server is shutting down: a fault of the infrastructure, never of
    a run. Whether the statement that failed took effect is unknown. ``url`` is the database
    URL as given (the message shows it without its password).
    """

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class UnknownFlow(LegatoError):
    """No flow with this name is registered."""


class UnknownRun(LegatoError):
    """No run with this id exists."""


class UnknownToken(LegatoError):
    """No active API token has this id or name."""


class SerializationError(LegatoError, TypeError):
    """A parameter or result cannot be stored as JSON."""


class PayloadTooLarge(LegatoError, ValueError):
    """The encoded parameters exceed the configured size limit."""


class InvalidState(LegatoError):
    """The action is not allowed in the run's current status (e.g. retrying a running run)."""


class RunFailed(LegatoError):
    """Raised by ``RunHandle.result()`` when the run ended ``failed``."""

    def __init__(self, run_id: str, error: str | None, traceback: str | None) -> None:
        super().__init__(f"run {run_id} failed: {error}")
        self.run_id = run_id
        self.error = error
        self.traceback = traceback


class RunCancelled(LegatoError):
    """Raised by ``RunHandle.result()`` when the run was cancelled."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was cancelled")
        self.run_id = run_id


class LeaseLost(LegatoError):
    """The worker no longer holds the run's lease: another worker owns it now (fencing)."""


class NonDeterminismError(LegatoError):
    """The flow called its steps in a different order than the recorded history."""


class FlowTimeout(LegatoError, TimeoutError):
    """A run exceeded its flow timeout."""


class StepTimeout(LegatoError, TimeoutError):
    """A step exceeded its timeout."""


class Cancelled(BaseException):
    """Raised inside a run at a step boundary when the run was cancelled.

    It derives from ``BaseException`` so that ``except Exception`` in user code does not
    swallow it.
    """


class RunInterrupted(BaseException):
    """Raised inside a run when its worker stops executing it for a reason that is not the
    run's: the worker is shutting down while the database is unreachable, or gave the
    attempt up. The attempt is not counted; the run is handed back or recovered and resumes
    from its last completed step.

    It derives from ``BaseException`` so that ``except Exception`` in user code does not
    swallow it.
    """


class Suspend(BaseException):
    """Raised inside a run to give its slot back until ``wake_ms`` (durable sleep, waiting for
    child runs). The worker records the run as ``sleeping``; any worker resumes it when due,
    replaying its finished steps."""

    def __init__(self, wake_ms: int, reason: str = "sleep") -> None:
        super().__init__(f"suspended until {wake_ms} ({reason})")
        self.wake_ms = wake_ms
        self.reason = reason
