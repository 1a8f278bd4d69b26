from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legato import RetryPolicy


def test_retries_int_means_extra_attempts() -> None:
    assert RetryPolicy.coerce(3).attempts == 4
    assert RetryPolicy.coerce(None).attempts == 1
    with pytest.raises(ValueError):
        RetryPolicy.coerce(-1)


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [("fixed", [2, 2, 2, 2]), ("linear", [2, 4, 6, 8]), ("exponential", [2, 6, 18, 20])],
)
def test_backoff_shapes_and_cap(backoff: str, expected: list[float]) -> None:
    policy = RetryPolicy(attempts=5, backoff=backoff, delay=2, factor=3, max_delay=20)  # type: ignore[arg-type]
    assert [policy.delay_for(n) for n in range(1, 5)] == expected


@given(st.integers(1, 20), st.floats(0, 1))
def test_jitter_stays_within_its_spread(attempt: int, jitter: float) -> None:
    policy = RetryPolicy(attempts=30, backoff="fixed", delay=10, jitter=jitter)
    delay = policy.delay_for(attempt, random.Random(attempt))
    assert 10 - 10 * jitter - 1e-9 <= delay <= 10 + 10 * jitter + 1e-9


def test_which_exceptions_retry() -> None:
    policy = RetryPolicy(
        attempts=3, retry_on=(ConnectionError,), dont_retry_on=(ConnectionResetError,)
    )
    assert policy.should_retry(ConnectionError(), 1)
    assert not policy.should_retry(ConnectionError(), 3)
    assert not policy.should_retry(ValueError(), 1)
    assert not policy.should_retry(ConnectionResetError(), 1)


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=2)
