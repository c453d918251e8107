"""The append-only audit trail: every transition, with who or what caused it, when, and the event id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from shared import metrics
from shared.db.models import AuditEntry


def record(
    session: Session,
    *,
    at: datetime,
    action: str,
    actor: str,
    request_id: str | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    event_id: str | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            at=at, action=action, actor=actor, request_id=request_id, from_state=from_state,
            to_state=to_state, event_id=event_id, reason=reason, details=details,
        )
    )
    if to_state is not None and to_state != from_state:
        metrics.count_transition(session, from_state, to_state)
