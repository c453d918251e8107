"""The sweeper: a periodic job of every reaper replica that finds what is due by partial indexes.

1. Windows that have ended: each request in an EXPIRABLE state whose `expires_at` has passed is ended
   here, in the database (REVOKING with its trigger, its hold released, claimed for this replica's pool
   while it has room), and `elevation.expired` is published as a notification (through the outbox) in
   the same transaction. Ending does not depend on that message being delivered (level-triggered).
2. Elevators that died mid-add: an ELEVATING row whose `lease_until` passed is treated as a failed
   add and moved to REVOKING (failed=True), so its membership is removed and it ends FAILED. The
   elevator sends no add that could land after its lease (services/elevator/membership.py).
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

from services.reaper.ending import end_request
from services.reaper.policy import ELEVATOR_LOST, SOURCE, expiry_reason
from shared import logs
from shared.clock import Clock
from shared.db import ledger, outbox
from shared.db.engine import transaction
from shared.db.models import EXPIRABLE_SQL, Request
from shared.db.transitions import Cause, transition
from shared.events import ElevationExpired, ElevationFailed, new_event
from shared.states import State, Trigger

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


def end_expired(factory: sessionmaker[Session], now: datetime, lease_until: datetime, room: int,
                limit: int = BATCH) -> list[str]:
    """End each request whose window has ended; returns the ids claimed (at most `room`) to revoke now."""
    return end_batch(factory, now, lease_until, room, limit)[1]


def end_batch(factory: sessionmaker[Session], now: datetime, lease_until: datetime, room: int,
              limit: int = BATCH) -> tuple[int, list[str]]:
    """`end_expired` in one transaction: (how many due rows it read, the ids it claimed). The audit and
    outbox rows are written together at commit (no flush per row): a mass expiry costs one statement
    a row, not six."""
    claimed: list[str] = []
    ended: list[str] = []
    with transaction(factory) as session, session.no_autoflush:
        ids = [row[0] for row in session.execute(_locking(session, due_expiries_query(now, limit))).all()]
        for request in session.scalars(select(Request).where(Request.id.in_(ids))
                                       .execution_options(populate_existing=True)):
            reason = expiry_reason(request.expires_at or now, request.checkout_expires_at)
            event = new_event("elevation.expired", ElevationExpired(request_id=request.id, reason=reason),
                              source=SOURCE)
            lease = lease_until if len(claimed) < room else None
            new = end_request(session, request, now=now, end_trigger=reason, lease_until=lease,
                              cause=Cause(actor="sweeper", event_id=event.id, reason=reason),
                              values={"expiry_event_id": event.id}, release=False)
            if new is None:  # ended meanwhile: still marked, so no sweep reads it again
                session.execute(update(Request).where(Request.id == request.id).values(expiry_event_id=event.id)
                                .execution_options(synchronize_session=False))
                continue
            session.expunge(request)  # the compare-and-set wrote it: no second UPDATE at commit
            outbox.enqueue(session, event)
            log.info("elevation.expiry.ended", request_id=request.id, reason=reason, event_id=event.id,
                     state=new.value)
            ended.append(request.id)
            if new is State.REVOKING and lease is not None:
                claimed.append(request.id)
        ledger.release_all(session, ended, now)
    return len(ids), claimed


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
            ledger.release(session, request.id, now)
            ledger.reconcile_soon(session, request.host, request.group_sid, now)
            outbox.enqueue(session, new_event("elevation.failed", ElevationFailed(
                request_id=request.id, error=ELEVATOR_LOST), source=SOURCE))
            log.error("elevation.elevator_lost", request_id=request.id, checkout_id=request.checkout_id,
                      host=request.host)
            ended.append(request.id)
    return ended


class Sweeper:
    """One sweep = expiries, lost elevations, then as many due revocations as the pool has room for."""

    def __init__(self, factory: sessionmaker[Session], clock: Clock, claim_due: Callable[[int], list[str]],
                 room: Callable[[], int], submit: Callable[..., object],
                 lease_until: Callable[[datetime], datetime]) -> None:
        self.factory = factory
        self.clock = clock
        self.claim_due = claim_due
        self.room = room
        self.submit = submit
        self.lease_until = lease_until

    def expire(self, now: datetime) -> None:
        """End every window ended by `now` (the sweep, and the expiry timers at their instant) and start
        the revocations this replica has room for; the rest are due for any replica."""
        while True:  # a mass expiry: batch after batch, each started as soon as it is committed
            read, claimed = end_batch(self.factory, now, self.lease_until(now), self.room())
            for request_id in claimed:
                self.submit(request_id, in_process=True)
            if read < BATCH:
                return

    def __call__(self) -> None:
        now = self.clock.now()
        self.expire(now)
        end_lost_elevations(self.factory, now)
        for request_id in self.claim_due(self.room()):
            self.submit(request_id, in_process=False)
