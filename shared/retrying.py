"""In-process retrying of transient WinRM failures: exponential backoff with full jitter, capped, in a time budget.

Shared by the elevator and the reaper. Only a `WinRMError` whose `.retryable` is true is retried;
anything else (a permanent WinRM error, a configuration error, a bug) propagates at once. The
budget bounds the whole loop: no sleep runs past it and no attempt starts after it, so a caller
that must be done by some instant can promise "budget + one attempt's own deadline".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_random_exponential

from shared.winrm.errors import WinRMError

T = TypeVar("T")

# Called before each sleep with (attempt number that failed, its error, seconds about to sleep).
OnRetry = Callable[[int, BaseException, float], None]


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, WinRMError) and exc.retryable


def retrying(*, initial: float, cap: float, budget: float, on_retry: OnRetry | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Retrying:
    """A tenacity policy: sleep uniform(0, min(cap, initial * 2**n)) between attempts, within `budget` seconds.

    `budget <= 0` means exactly one attempt. The last error is re-raised as itself, not wrapped.
    """

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None:
                seconds = state.next_action.sleep if state.next_action is not None else 0.0
                on_retry(state.attempt_number, error, seconds)

    return Retrying(
        retry=retry_if_exception(is_retryable),
        wait=wait_random_exponential(multiplier=initial, max=cap),
        stop=stop_before_delay(max(budget, 0.0)),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )


def call(fn: Callable[[], T], policy: Retrying) -> T:
    """Run `fn` under `policy` (a thin, typed wrapper over `Retrying.__call__`)."""
    return policy(fn)
