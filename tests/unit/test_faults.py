"""Pure pieces of fault handling: the reconnect backoff, the recovery grace, log line limits."""

from __future__ import annotations

import pytest

from legato.config import Settings
from legato.errors import NonDeterminismError, PayloadTooLarge, SerializationError
from legato.heartbeat import Health
from legato.logcapture import _cut
from legato.retry import RetryPolicy
from legato.serialization import storable_text


def test_reconnect_backoff_grows_from_50_ms_and_stays_bounded_and_jittered() -> None:
    settings = Settings(reconnect_max_seconds=2.0)
    first = [settings.backoff(0) for _ in range(200)]
    assert all(0.025 <= d <= 0.05 for d in first)
    assert len({round(d, 6) for d in first}) > 50  # jittered: workers do not retry in step
    late = [settings.backoff(n) for n in range(6, 40)]  # 50 ms * 2**6 is past the cap
    assert all(1.0 <= d <= 2.0 for d in late)
    assert max(settings.backoff(n) for n in range(10)) <= 2.0


def test_recovery_waits_after_a_fault_until_the_own_leases_were_extended() -> None:
    health = Health()
    assert health.may_recover(1.0, now=100.0)  # no fault seen: recover as usual
    health.fault_at = 100.0
    assert not health.may_recover(1.0, now=105.0)  # no heartbeat since the fault
    health.beat(started=100.5)
    assert not health.may_recover(1.0, now=100.8)  # others may not have beaten yet
    assert health.may_recover(1.0, now=101.0)
    health.fault_at = 102.0  # a new fault, after that heartbeat
    assert not health.may_recover(1.0, now=110.0)


@pytest.mark.parametrize("message", ["x" * 5000, "é" * 3000, "\ud800" * 2000])
def test_a_long_log_line_is_cut_with_a_note_of_its_length(message: str) -> None:
    cut = _cut(message, 1000)
    assert len(cut.encode("utf-8", "surrogatepass")) <= 1000
    assert "line cut:" in cut and "over the 1000-byte limit" in cut
    assert _cut("short", 1000) == "short"


def test_storable_text_replaces_what_databases_refuse() -> None:
    assert storable_text("a\x00b") == "a\ufffdb"
    assert storable_text("lone \ud800 surrogate").encode("utf-8")
    assert storable_text("plain é") == "plain é"


@pytest.mark.parametrize(
    "error",
    [NonDeterminismError("order"), SerializationError("json"), PayloadTooLarge("big")],
)
def test_failures_no_attempt_can_mend_are_never_retried(error: Exception) -> None:
    policy = RetryPolicy(attempts=5)
    assert not policy.should_retry(error, 1)
    assert policy.should_retry(ValueError("flaky"), 1)
