"""Compare-and-set transitions of a request, each with its audit row, in the caller's transaction.

`UPDATE requests SET state = :new ... WHERE id = :id AND state = :current` changes one row or none:
two replicas acting on one request can never both succeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from shared.db import audit
from shared.db.models import Request
from shared.states import State, Trigger, next_state


@dataclass(frozen=True)
class Cause:
    """Who or what caused a transition: recorded in the audit trail."""

    actor: str
    event_id: str | None = None
    reason: str | None = None


def transition(
    session: Session,
    request: Request,
    trigger: Trigger,
    *,
    now: datetime,
    cause: Cause,
    values: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> State | None:
    """Move `request` by `trigger`; returns the new state, or None when it does not apply or lost a race.

    On success the row and `request` carry the new state and `values`, and an audit row is added.
    """
    current = State(request.state)
    target = next_state(current, trigger, failed=request.failed)
    if target is None:
        return None
    changes = {"state": target.value, "updated_at": now, **(values or {})}
    result = session.execute(
        update(Request)
        .where(Request.id == request.id, Request.state == current.value)
        .values(**changes)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    for key, value in changes.items():  # the row has them already: no second UPDATE at the next flush
        set_committed_value(request, key, value)
    audit.record(
        session, at=now, action=trigger.value, actor=cause.actor, request_id=request.id,
        from_state=current.value, to_state=target.value, event_id=cause.event_id, reason=cause.reason,
        details=details,
    )
    return target


def load(session: Session, request_id: str) -> Request | None:
    """Fresh read of one request (bypasses the identity map, which may hold a stale copy)."""
    return session.get(Request, request_id, populate_existing=True)
