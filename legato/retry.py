"""Retry policies for flows and steps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from .errors import NonDeterminismError, PayloadTooLarge, SerializationError

Backoff = Literal["fixed", "linear", "exponential"]

#: Failures that no other attempt can mend: never retried, whatever the policy says.
NEVER_RETRIED = (NonDeterminismError, SerializationError, PayloadTooLarge)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed flow or step is tried again.

    ``attempts`` counts every try, the first included (``retries=3`` means 4 attempts).
    The delay before retry *n* (1-based) is ``delay`` (fixed), ``delay * n`` (linear) or
    ``delay * factor ** (n - 1)`` (exponential), capped at ``max_delay``, then spread by
    ``jitter`` (a fraction: 0.1 means ±10%). Only exceptions that are instances of
    ``retry_on`` and not of ``dont_retry_on`` are retried.
    """

    attempts: int = 1
    backoff: Backoff = "exponential"
    delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry_on: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")
        if self.delay < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("retry delays must be >= 0 and jitter within [0, 1]")
        if self.backoff not in ("fixed", "linear", "exponential"):
            raise ValueError(f"unknown backoff {self.backoff!r}")

    @classmethod
    def coerce(cls, value: int | RetryPolicy | None) -> RetryPolicy:
        """Accept ``retries=N`` (N retries after the first attempt) or a policy."""
        if value is None:
            return cls()
        if isinstance(value, RetryPolicy):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("retries must be a non-negative int or a RetryPolicy")
        return cls(attempts=value + 1)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether a failure in ``attempt`` (1-based) earns another try.

        Errors that another attempt cannot mend are never retried: steps called out of their
        recorded order, and values that cannot be stored (not JSON, or over the size limit).
        """
        if attempt >= self.attempts or isinstance(exc, NEVER_RETRIED):
            return False
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.dont_retry_on)

    def delay_for(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based) before the next one."""
        if self.backoff == "fixed":
            base = self.delay
        elif self.backoff == "linear":
            base = self.delay * attempt
        else:
            base = self.delay * self.factor ** (attempt - 1)
        base = min(base, self.max_delay)
        if self.jitter:
            spread = base * self.jitter
            base += (rng or random).uniform(-spread, spread)
        return max(0.0, base)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description (stored with the flow for display)."""
        return {
            "attempts": self.attempts,
            "backoff": self.backoff,
            "delay": self.delay,
            "factor": self.factor,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
        }


def as_timedelta_seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
