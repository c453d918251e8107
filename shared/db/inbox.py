"""The inbox: each consumed event id is recorded in the transaction of its effect: one effect per event id."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Insert, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared.db.models import InboxEvent


def first_time(session: Session, consumer: str, event_id: str, now: datetime) -> bool:
    """Record `event_id` for `consumer`; False when it was already recorded (a duplicate delivery).

    Concurrent duplicates are safe: the primary key makes exactly one transaction insert the row;
    the other waits for it and then inserts nothing.
    """
    values = {"consumer": consumer, "event_id": event_id, "received_at": now}
    dialect = session.get_bind().dialect.name
    stmt: Insert
    if dialect == "postgresql":
        stmt = pg_insert(InboxEvent).values(values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite_insert(InboxEvent).values(values).on_conflict_do_nothing()
    else:  # pragma: no cover - only the two engines above are supported
        stmt = insert(InboxEvent).values(values)
    # RETURNING, not rowcount: drivers disagree on rowcount for a skipped ON CONFLICT insert.
    return session.execute(stmt.returning(InboxEvent.event_id)).first() is not None
