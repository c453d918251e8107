"""The reaper's pure rules: backoff bounds, stall announcements, which expiry bound was hit."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.reaper.policy import backoff_seconds, expiry_reason, stall_due

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@given(st.integers(min_value=0, max_value=10_000), st.floats(0.01, 5), st.floats(0.1, 120), st.integers())
def test_backoff_is_between_half_and_one_capped_step(attempts: int, initial: float, cap: float, seed: int) -> None:
    delay = backoff_seconds(attempts, initial=initial, cap=cap, rng=random.Random(seed))
    step = min(cap, initial * 2 ** min(attempts, 30))
    assert step / 2 <= delay <= step
    assert delay <= cap  # a host that comes back is retried within one capped step


def test_backoff_grows_exponentially_until_the_cap() -> None:
    delays = [backoff_seconds(n, initial=1, cap=30, rng=random.Random(0)) for n in range(8)]
    assert delays[0] <= 1 and 1 <= delays[1] <= 2 and 2 <= delays[2] <= 4
    assert all(d <= 30 for d in delays) and delays[-1] >= 15


def test_stall_is_announced_at_the_threshold_then_at_each_doubling() -> None:
    def due(elapsed: float, stalled_after: float | None) -> bool:
        stalled_at = None if stalled_after is None else T0 + timedelta(seconds=stalled_after)
        return stall_due(T0 + timedelta(seconds=elapsed), T0, stalled_at, 300)

    assert not due(299, None) and due(300, None)
    assert not due(599, 300) and due(600, 300)
    assert not due(1199, 610) and due(1220, 610)


def test_expiry_reason_names_the_bound_that_ended_the_window() -> None:
    assert expiry_reason(T0, T0) == "checkout_expired"
    assert expiry_reason(T0, T0 + timedelta(seconds=1)) == "approval_expired"
    assert expiry_reason(T0, T0 - timedelta(seconds=1)) == "checkout_expired"
