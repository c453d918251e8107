"""Riding out a database outage in place, for work that already holds a claim.

A daemon that has claimed something (an elevation, a revocation) must not hand a failed transaction back
to the consumer or the pool: the event is already consumed, or the claim's lease would make everyone wait
it out. `Outlasting.run` retries the transaction with backoff while the database is unreachable, until a
bound the caller gives (the moment the claim stops being worth anything); then the error propagates.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from shared import logs
from shared.amqp.connection import backoff_delay
from shared.clock import Clock
from shared.db.engine import TRANSIENT_DATABASE_ERRORS

T = TypeVar("T")

log = logs.get_logger()


class Outlasting:
    """`events`: the log event prefix (`elevation.database` logs `.retrying` and `.gave_up`)."""

    def __init__(self, clock: Clock, sleep: Callable[[float], object], events: str,
                 stopping: threading.Event | None = None) -> None:
        self._clock = clock
        self._sleep = sleep
        self._events = events
        self._stopping = stopping or threading.Event()

    def run(self, step: str, until: datetime, fn: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                return fn()
            except TRANSIENT_DATABASE_ERRORS as exc:
                delay = backoff_delay(failures)
                failures += 1
                error = str(exc).splitlines()[0][:300]
                if self._stopping.is_set() or self._clock.now() + timedelta(seconds=delay) > until:
                    log.error(f"{self._events}.gave_up", step=step, failures=failures, error=error)
                    raise
                log.warning(f"{self._events}.retrying", step=step, failures=failures, error=error,
                            retry_in_seconds=round(delay, 2))
                self._sleep(delay)
