"""The reaper's pure decisions: which bound expired, when to try again, when a revocation counts as stalled.

No I/O here, so each rule is tested at any instant with plain values.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

SOURCE = "jit/reaper"
CONSUMER = "reaper"
ELEVATOR_LOST = "elevator lost during add"


def expiry_reason(expires_at: datetime, checkout_expires_at: datetime) -> str:
    """Which bound of `expires_at = min(checkout end, approval end)` was hit."""
    return "checkout_expired" if checkout_expires_at <= expires_at else "approval_expired"


def backoff_seconds(attempts: int, *, initial: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before durable attempt number `attempts + 1`: exponential, capped, with full jitter above half.

    The jitter spreads the retries of many requests on one host; the floor of half the step keeps a
    long outage from turning into a tight loop.
    """
    step = min(cap, initial * (2 ** min(attempts, 30)))
    fraction = rng.random() if rng is not None else random.random()  # noqa: S311 - jitter, not a secret
    return float(step / 2 + fraction * step / 2)


def next_attempt(now: datetime, attempts: int, *, initial: float, cap: float) -> datetime:
    return now + timedelta(seconds=backoff_seconds(attempts, initial=initial, cap=cap))


def stall_due(now: datetime, revoking_since: datetime, stalled_at: datetime | None, threshold: float) -> bool:
    """True when `elevation.revocation_stalled` should be published now.

    First at `threshold` seconds after the revocation began, then again each time the failing time
    doubles (2x, 4x, 8x ...): an alert that stays alive for a host that never comes back, without
    flooding the channel for one that is merely slow.
    """
    elapsed = (now - revoking_since).total_seconds()
    if stalled_at is None:
        return elapsed >= threshold
    last = max((stalled_at - revoking_since).total_seconds(), threshold)
    return elapsed >= 2 * last

