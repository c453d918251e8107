"""The transactional outbox: events are written with the state change that caused them, then relayed.

`enqueue` runs inside the caller's transaction. `OutboxRelay` is a thread that claims unpublished
rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL; the `BEGIN IMMEDIATE` write lock on SQLite), publishes
each with publisher confirms, and marks it published in the same transaction. A crash between the
publish and the commit publishes the event again, which consumers' inboxes absorb.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import transaction
from shared.db.models import OutboxEvent
from shared.events import Event
from shared.logs import get_logger

log = get_logger()


class PublishPort(Protocol):
    def publish(self, routing_key: str, body: bytes, *, message_id: str) -> None: ...


def enqueue(session: Session, event: Event) -> None:
    session.add(OutboxEvent(event_id=event.id, type=event.type, body=event.to_json(),
                            created_at=datetime.now(UTC), attempts=0))


def publish_pending(factory: sessionmaker[Session], publisher: PublishPort, *, batch: int = 100) -> int:
    """Publish up to `batch` unpublished events in order; returns how many were published."""
    published = 0
    with transaction(factory) as session:
        stmt = select(OutboxEvent).where(OutboxEvent.published_at.is_(None)).order_by(OutboxEvent.id).limit(batch)
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        for row in session.scalars(stmt):
            try:
                publisher.publish(row.type, row.body, message_id=row.event_id)
            except Exception as exc:
                row.attempts += 1
                row.last_error = str(exc)[:2000]
                log.warning("outbox.publish.failed", event_id=row.event_id, type=row.type,
                            attempt=row.attempts, error=str(exc))
                break
            row.published_at = datetime.now(UTC)
            published += 1
    return published


class OutboxRelay:
    """Publishes the outbox in the background until stopped; `wake()` after a commit cuts latency."""

    def __init__(self, factory: sessionmaker[Session], publisher: PublishPort, *, poll_seconds: float = 0.2) -> None:
        self._factory = factory
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
                while publish_pending(self._factory, self._publisher) and not self._stop.is_set():
                    pass
                failures = 0
            except Exception as exc:  # database or broker down: back off and keep going
                failures += 1
                log.error("outbox.relay.failed", error=str(exc), attempt=failures)
            self._wake.wait(min(self._poll * (2 ** min(failures, 5)), 10.0))
        try:  # drain what the last handlers committed before we exit
            publish_pending(self._factory, self._publisher)
        except Exception as exc:
            log.error("outbox.relay.failed", error=str(exc), phase="shutdown")
