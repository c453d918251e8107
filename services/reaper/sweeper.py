"""The sweeper: a periodic job of every reaper replica that finds what is due by partial indexes.

1. Windows that have ended: `elevation.expired` is published (through the outbox) for each request
   in an EXPIRABLE state whose `expires_at` has passed and that has no `expiry_event_id`; the id is
   set in the same transaction, so one expiry is published per request however many replicas sweep.
2. Elevators that died mid-add: an ELEVATING row whose `lease_until` passed is treated as a failed
   add and moved to REVOKING (failed=True), so its membership is removed and it ends FAILED.
3. Revocations whose `next_attempt_at` has come (retries, and leases of dead workers) are claimed
   and handed to the revocation pool.
Each query reads `ix_requests_due_expiry`, `ix_requests_stuck_elevating` or
`ix_requests_due_revocation`: its cost follows what is due, not the size of the table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from services.reaper.policy import ELEVATOR_LOST, SOURCE, expiry_reason
from shared import logs
from shared.clock import Clock
from shared.db import outbox
from shared.db.engine import transaction
from shared.db.models import EXPIRABLE_SQL, Request
from shared.db.transitions import Cause, transition
from shared.events import ElevationExpired, ElevationFailed, new_event
from shared.states import Trigger

log = logs.get_logger()
BATCH = 200
# Each query repeats its partial index's predicate as the same literal SQL: SQLite uses a partial
# index only when the query's WHERE contains the index's terms verbatim (a bound parameter does not
# count), and PostgreSQL's generic plans of prepared statements need the same.
ELEVATING_SQL = "state = 'ELEVATING'"


def _locking(session: Session, query: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True)
    return query  # SQLite: the transaction already holds the write lock (BEGIN IMMEDIATE)


def due_expiries_query(now: datetime, limit: int = BATCH) -> Any:
    return (select(Request.id, Request.expires_at, Request.checkout_expires_at)
            .where(text(EXPIRABLE_SQL), Request.expires_at <= now)
            .order_by(Request.expires_at).limit(limit))


def publish_expiries(factory: sessionmaker[Session], now: datetime, limit: int = BATCH) -> int:
    """Publish `elevation.expired` for each request whose window has ended; returns how many."""
    published = 0
    with transaction(factory) as session:
        for request_id, expires_at, checkout_expires_at in session.execute(
                _locking(session, due_expiries_query(now, limit))).all():
            reason = expiry_reason(expires_at, checkout_expires_at)
            event = new_event("elevation.expired", ElevationExpired(request_id=request_id, reason=reason),
                              source=SOURCE)
            claimed = session.execute(
                update(Request).where(Request.id == request_id, Request.expiry_event_id.is_(None))
                .values(expiry_event_id=event.id).execution_options(synchronize_session=False))
            if claimed.rowcount:  # type: ignore[attr-defined]
                outbox.enqueue(session, event)
                published += 1
                log.info("elevation.expiry.published", request_id=request_id, reason=reason, event_id=event.id)
    return published


def lost_elevations_query(now: datetime, limit: int = BATCH) -> Any:
    return select(Request).where(
        text(ELEVATING_SQL), or_(Request.lease_until < now, Request.lease_until.is_(None)),
    ).order_by(Request.lease_until).limit(limit)


def end_lost_elevations(factory: sessionmaker[Session], now: datetime, limit: int = BATCH) -> list[str]:
    """ELEVATING rows whose elevator lease passed: the add may have landed, so remove it; ends FAILED."""
    ended = []
    with transaction(factory) as session:
        for request in session.scalars(_locking(session, lost_elevations_query(now, limit))):
            new = transition(session, request, Trigger.ELEVATION_FAILED, now=now,
                             cause=Cause(actor="sweeper", reason=ELEVATOR_LOST), values={
                                 "failed": True, "error": ELEVATOR_LOST, "end_trigger": "elevator_lost",
                                 "revoking_since": now, "next_attempt_at": now, "lease_until": None})
            if new is None:
                continue
            outbox.enqueue(session, new_event("elevation.failed", ElevationFailed(
                request_id=request.id, error=ELEVATOR_LOST), source=SOURCE))
            log.error("elevation.elevator_lost", request_id=request.id, checkout_id=request.checkout_id,
                      host=request.host)
            ended.append(request.id)
    return ended


class Sweeper:
    """One sweep = expiries, lost elevations, then as many due revocations as the pool has room for."""

    def __init__(self, factory: sessionmaker[Session], clock: Clock, claim_due: Callable[[int], list[str]],
                 room: Callable[[], int], submit: Callable[[str], object]) -> None:
        self.factory = factory
        self.clock = clock
        self.claim_due = claim_due
        self.room = room
        self.submit = submit

    def __call__(self) -> None:
        now = self.clock.now()
        publish_expiries(self.factory, now)
        end_lost_elevations(self.factory, now)
        for request_id in self.claim_due(self.room()):
            self.submit(request_id)
