"""Pure parts of the elevator: the retry budget against the window, and the shared tenacity policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.elevator.claim import retry_budget
from shared.retrying import call, is_retryable, retrying
from shared.settings import Settings
from shared.winrm import PermanentWinRMError, RetryableWinRMError

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def test_budget_is_the_setting_when_the_window_is_long() -> None:
    settings = Settings(elevation_retry_seconds=60, elevation_margin_seconds=5)
    assert retry_budget(settings, NOW, NOW + timedelta(hours=1)) == 60


def test_budget_ends_a_margin_before_the_window() -> None:
    settings = Settings(elevation_retry_seconds=60, elevation_margin_seconds=5)
    assert retry_budget(settings, NOW, NOW + timedelta(seconds=20)) == pytest.approx(15)
    assert retry_budget(settings, NOW, NOW + timedelta(seconds=3)) == 0



class Flaky:
    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_retryable_errors_are_retried_with_capped_jittered_sleeps() -> None:
    sleeps: list[float] = []
    fn = Flaky([RetryableWinRMError("h:1", "add_member", "500")] * 4)
    assert call(fn, retrying(initial=0.5, cap=1.0, budget=60, sleep=sleeps.append)) == "done"
    assert fn.calls == 5
    assert len(sleeps) == 4 and all(0 <= s <= 1.0 for s in sleeps)


def test_permanent_errors_are_not_retried() -> None:
    fn = Flaky([PermanentWinRMError("h:1", "add_member", "401")])
    with pytest.raises(PermanentWinRMError):
        call(fn, retrying(initial=0.01, cap=0.01, budget=60, sleep=lambda _: None))
    assert fn.calls == 1
    assert not is_retryable(ValueError("bug")) and is_retryable(RetryableWinRMError("h", "op", "x"))


def test_a_zero_budget_means_one_attempt_and_the_error_itself() -> None:
    fn = Flaky([RetryableWinRMError("h:1", "resolve", "down")] * 3)
    with pytest.raises(RetryableWinRMError, match="resolve on h:1"):
        call(fn, retrying(initial=0.01, cap=0.01, budget=0, sleep=lambda _: None))
    assert fn.calls == 1


def test_the_budget_bounds_the_total_time() -> None:
    fn = Flaky([RetryableWinRMError("h:1", "add_member", "down")] * 1000)
    seen: list[int] = []
    with pytest.raises(RetryableWinRMError):
        call(fn, retrying(initial=0.01, cap=0.02, budget=0.3, on_retry=lambda n, _e, _s: seen.append(n)))
    assert 1 < fn.calls < 1000 and seen == list(range(1, fn.calls))
