"""The transactional outbox: events are written with the state change that caused them, then relayed.

`enqueue` runs inside the caller's transaction. `OutboxRelay` is a thread that claims unpublished
rows for a while (`FOR UPDATE SKIP LOCKED` on PostgreSQL; the `BEGIN IMMEDIATE` write lock on SQLite
makes the claim atomic there), publishes each with publisher confirms, then marks them published. A
crash between the publish and the mark publishes the event again, which consumers' inboxes absorb.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared import metrics
from shared.db.engine import transaction
from shared.db.models import OutboxEvent
from shared.events import Event
from shared.logs import get_logger

log = get_logger()
CLAIM_SECONDS = 30.0


class PublishPort(Protocol):
    def publish(self, routing_key: str, body: bytes, *, message_id: str) -> None: ...


def enqueue(session: Session, event: Event) -> None:
    session.add(OutboxEvent(event_id=event.id, type=event.type, body=event.to_json(),
                            created_at=datetime.now(UTC), attempts=0))


def publish_pending(factory: sessionmaker[Session], publisher: PublishPort, *, batch: int = 100,
                    types: Collection[str] | None = None) -> int:
    """Publish up to `batch` unpublished events in order; returns how many were published.

    Rows are claimed for `CLAIM_SECONDS` in one short transaction, published with no transaction
    open (on SQLite a transaction holds the whole database's write lock, and a slow broker must not
    stall every writer), then marked in another. A relay that dies in between leaves its claim to
    expire, and another relay publishes those rows again: at least once, which inboxes absorb.
    """
    rows = _claim(factory, batch, types)
    published: list[int] = []
    failed: tuple[int, str] | None = None
    for row_id, event_type, body, event_id in rows:
        try:
            publisher.publish(event_type, body, message_id=event_id)
        except Exception as exc:
            failed = (row_id, str(exc)[:2000])
            metrics.EVENTS_PUBLISHED.labels(type=event_type, outcome="failed").inc()
            log.warning("outbox.publish.failed", event_id=event_id, type=event_type, error=str(exc))
            break
        published.append(row_id)
        metrics.EVENTS_PUBLISHED.labels(type=event_type, outcome="published").inc()
    with transaction(factory) as session:
        now = datetime.now(UTC)
        if published:
            session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(published))
                            .values(published_at=now, claimed_until=None))
        unsent = [r[0] for r in rows if r[0] not in published]
        if unsent:  # give back what this relay did not get to, so the next pass takes it in order
            session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(unsent)).values(claimed_until=None))
        if failed:
            session.execute(update(OutboxEvent).where(OutboxEvent.id == failed[0])
                            .values(attempts=OutboxEvent.attempts + 1, last_error=failed[1]))
    return len(published)


def _claim(factory: sessionmaker[Session], batch: int,
           types: Collection[str] | None = None) -> list[tuple[int, str, bytes, str]]:
    now = datetime.now(UTC)
    with transaction(factory) as session:
        stmt = (select(OutboxEvent.id, OutboxEvent.type, OutboxEvent.body, OutboxEvent.event_id)
                .where(OutboxEvent.published_at.is_(None),
                       or_(OutboxEvent.claimed_until.is_(None), OutboxEvent.claimed_until < now))
                .order_by(OutboxEvent.id).limit(batch))
        if types is not None:  # the types this relay's broker user may publish (shared/trust.py)
            stmt = stmt.where(OutboxEvent.type.in_(sorted(types)))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        rows = [(r.id, r.type, r.body, r.event_id) for r in session.execute(stmt)]
        if rows:
            session.execute(update(OutboxEvent).where(OutboxEvent.id.in_([r[0] for r in rows]))
                            .values(claimed_until=now + timedelta(seconds=CLAIM_SECONDS)))
    return rows


class OutboxRelay:
    """Publishes the outbox in the background until stopped; `wake()` after a commit cuts latency."""

    def __init__(self, factory: sessionmaker[Session], publisher: PublishPort, *, poll_seconds: float = 0.2,
                 types: Collection[str] | None = None) -> None:
        self._factory = factory
        # Only the event types this daemon's broker user may publish; None: all (one shared user).
        self._types = types
        self._publisher = publisher
        self._poll = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)

    def start(self) -> OutboxRelay:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                while publish_pending(self._factory, self._publisher, types=self._types) \
                        and not self._stop.is_set():
                    pass
                failures = 0
            except Exception as exc:  # database or broker down: back off and keep going
                failures += 1
                log.error("outbox.relay.failed", error=str(exc), attempt=failures)
            self._wake.wait(min(self._poll * (2 ** min(failures, 5)), 10.0))
        try:  # drain what the last handlers committed before we exit
            publish_pending(self._factory, self._publisher, types=self._types)
        except Exception as exc:
            log.error("outbox.relay.failed", error=str(exc), phase="shutdown")
