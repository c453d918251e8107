"""Expiry timers: a request is ended at its `expires_at`, not up to a sweep interval later.

Each reaper replica reads, every `sweep_interval_seconds`, the windows that end within the next two
intervals (`ix_requests_due_expiry`, ordered by `expires_at`, at most `expiry_timers` of them) and keeps
them as in-process timers. The database is the truth, not a message: the armed set is replaced by each
read, so an extension moves its timer and a check-in leaves nothing to do. When a timer comes, the
sweeper's own ending transaction runs at that instant (`Sweeper.expire`): it ends whatever is due in the
database, claimed for this replica's pool while it has room. Replicas that armed the same timer stay
correct, whoever ends a request first wins (compare-and-set; `FOR UPDATE SKIP LOCKED` on PostgreSQL,
BEGIN IMMEDIATE on SQLite) and the others find nothing. The periodic sweep remains the backstop (a
window shorter than a sweep interval, timers beyond the cap, a replica that was down).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import Clock
from shared.db.models import EXPIRABLE_SQL, Request

HORIZON_INTERVALS = 2  # a read sees the windows ending before the read after next


def ending_soon(session: Session, until: datetime, cap: int) -> list[tuple[datetime, str]]:
    """(expires_at, id) of the EXPIRABLE requests whose window ends by `until`, soonest first."""
    query = (select(Request.expires_at, Request.id).where(text(EXPIRABLE_SQL), Request.expires_at <= until)
             .order_by(Request.expires_at).limit(cap))
    return [(at, rid) for at, rid in session.execute(query).all() if at is not None]


class ExpiryTimers:
    """The armed timers of one replica: `arm` reads them (a periodic job), `step` waits for the next one
    and fires it (another job, so a read never delays a timer)."""

    def __init__(self, factory: sessionmaker[Session], clock: Clock, expire: Callable[[datetime], object], *,
                 interval: float, cap: int) -> None:
        self.factory = factory
        self.clock = clock
        self.expire = expire
        self.interval = interval
        self.cap = cap
        self._armed: list[tuple[datetime, str]] = []
        self._full = False
        self._changed = threading.Condition()

    def armed(self) -> list[tuple[datetime, str]]:
        with self._changed:
            return list(self._armed)

    def arm(self) -> None:
        """Replace the armed set with the database's windows ending within the horizon."""
        until = self.clock.now() + timedelta(seconds=HORIZON_INTERVALS * self.interval)
        with self.factory() as session:
            armed = ending_soon(session, until, self.cap)
        with self._changed:
            self._armed = armed
            self._full = len(armed) >= self.cap
            self._changed.notify_all()

    def fire_due(self) -> bool:
        """End what is due now if a timer has come; True if one had."""
        now = self.clock.now()
        with self._changed:
            come = [t for t in self._armed if t[0] <= now]
            if not come:
                return False
            self._armed = self._armed[len(come):]
            more = self._full and not self._armed
        self.expire(now)
        if more:  # more were due than the cap: read the next ones now
            self.arm()
        return True

    def step(self) -> None:
        """Fire what has come, else wait for the next timer or a new read (at most one interval, so the
        daemon's stop is seen within one)."""
        if self.fire_due():
            return
        with self._changed:
            first = self._armed[0][0] if self._armed else None
            wait = self.interval if first is None else min(self.interval, (first - self.clock.now()).total_seconds())
            if wait > 0:
                self._changed.wait(wait)
