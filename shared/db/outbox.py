"""The transactional outbox: events are written with the state change that caused them, then relayed.

`enqueue` runs inside the caller's transaction. `OutboxRelay` is a thread that publishes unpublished
rows in order, each with publisher confirms, and marks them published. A crash between the publish and
the mark publishes the event again, which consumers' inboxes absorb.

On PostgreSQL one transaction does it all: it locks the rows (`FOR UPDATE SKIP LOCKED`: another relay
skips them, and a relay that dies releases them with its connection), publishes, marks them, and commits
without waiting for the WAL flush (`synchronous_commit = off`): a mark lost in a crash only publishes the
event again. A broker that blocks publishers (a resource alarm) keeps that transaction open for up to the
blocked-connection timeout (60 s): only the rows it locked wait, and a server's
`idle_in_transaction_session_timeout` that ends it first only makes the next pass publish them again.

On SQLite a transaction is the whole database's write lock, which must not be held across broker I/O: rows
are claimed for `CLAIM_SECONDS` in one short transaction (`BEGIN IMMEDIATE` makes the claim atomic),
published with no transaction open, then marked in another.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from shared import metrics
from shared.db.engine import transaction
from shared.db.models import OutboxEvent
from shared.events import Event
from shared.logs import get_logger

log = get_logger()
CLAIM_SECONDS = 30.0
BATCH = 100


class PublishPort(Protocol):
    def publish(self, routing_key: str, body: bytes, *, message_id: str) -> None: ...


def enqueue(session: Session, event: Event) -> None:
    session.add(OutboxEvent(event_id=event.id, type=event.type, body=event.to_json(),
                            created_at=datetime.now(UTC), attempts=0))


def publish_pending(factory: sessionmaker[Session], publisher: PublishPort, *, batch: int = BATCH,
                    types: Collection[str] | None = None) -> int:
    """Publish up to `batch` unpublished events in order; returns how many were published."""
    if factory.kw["bind"].dialect.name == "postgresql":
        with transaction(factory) as session:
            session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            rows = _select(session, batch, types, datetime.now(UTC))
            published, failed = _publish(publisher, rows)
            _mark(session, rows, published, failed)
        return len(published)
    # SQLite: claimed for a while in one transaction, published with none open, marked in another. A relay
    # that dies in between leaves its claim to expire, and another publishes those rows again.
    rows = _claim(factory, batch, types)
    published, failed = _publish(publisher, rows)
    with transaction(factory) as session:
        _mark(session, rows, published, failed)
    return len(published)


Row = tuple[int, str, bytes, str]


def _publish(publisher: PublishPort, rows: list[Row]) -> tuple[list[int], tuple[int, str] | None]:
    """Publish in order until one fails: the ids published, and the failed row's id and error."""
    published: list[int] = []
    for row_id, event_type, body, event_id in rows:
        try:
            publisher.publish(event_type, body, message_id=event_id)
        except Exception as exc:
            metrics.EVENTS_PUBLISHED.labels(type=event_type, outcome="failed").inc()
            log.warning("outbox.publish.failed", event_id=event_id, type=event_type, error=str(exc))
            return published, (row_id, str(exc)[:2000])
        published.append(row_id)
        metrics.EVENTS_PUBLISHED.labels(type=event_type, outcome="published").inc()
    return published, None


def _mark(session: Session, rows: list[Row], published: list[int], failed: tuple[int, str] | None) -> None:
    if published:
        session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(published))
                        .values(published_at=datetime.now(UTC), claimed_until=None))
    unsent = [r[0] for r in rows if r[0] not in published]
    if unsent:  # give back what this relay did not get to, so the next pass takes it in order
        session.execute(update(OutboxEvent).where(OutboxEvent.id.in_(unsent)).values(claimed_until=None))
    if failed:
        session.execute(update(OutboxEvent).where(OutboxEvent.id == failed[0])
                        .values(attempts=OutboxEvent.attempts + 1, last_error=failed[1]))


def _select(session: Session, batch: int, types: Collection[str] | None, now: datetime) -> list[Row]:
    stmt = (select(OutboxEvent.id, OutboxEvent.type, OutboxEvent.body, OutboxEvent.event_id)
            .where(OutboxEvent.published_at.is_(None),
                   or_(OutboxEvent.claimed_until.is_(None), OutboxEvent.claimed_until < now))
            .order_by(OutboxEvent.id).limit(batch))
    if types is not None:  # the types this relay's broker user may publish (shared/trust.py)
        stmt = stmt.where(OutboxEvent.type.in_(sorted(types)))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return [(r.id, r.type, r.body, r.event_id) for r in session.execute(stmt)]


def _claim(factory: sessionmaker[Session], batch: int, types: Collection[str] | None = None) -> list[Row]:
    now = datetime.now(UTC)
    with transaction(factory) as session:
        rows = _select(session, batch, types, now)
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
                # A short batch was all there was: what commits later wakes us (or the poll finds it).
                while publish_pending(self._factory, self._publisher, types=self._types) >= BATCH \
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
