"""The state changes jit-approval makes, each with its audit row and outgoing event in the caller's transaction.

Approve, deny and cancel are compare-and-set transitions (`shared.db.transitions`); each returns
False when the request was no longer PENDING (another replica or another decision came first).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.db import audit, outbox
from shared.db.models import Request
from shared.db.transitions import Cause, transition
from shared.events import ElevationApproved, ElevationCancelled, ElevationDenied, new_event
from shared.logs import get_logger
from shared.rules import POLICY, approval_expiry
from shared.states import State, Trigger

SOURCE = "jit/approval"
log = get_logger()


def lock_request(session: Session, request_id: str) -> None:
    """Serialise everything jit-approval does to one request id, across replicas.

    A decision that arrives before its request is parked; without this lock the request could be
    recorded concurrently and miss the parked decision. SQLite needs nothing: every transaction
    takes the write lock up front (BEGIN IMMEDIATE).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                        {"key": f"request:{request_id}"})


def approve(session: Session, row: Request, *, approver_id: str, window_seconds: int, now: datetime, cause: Cause,
            policy: str | None = None, approvers: list[str] | None = None) -> bool:
    # The window the requester asked for (`duration_seconds`) can only shorten the task's window.
    expires_at = approval_expiry(row.checkout_expires_at, now, window_seconds, row.duration_seconds)
    values = {"approver_id": approver_id, "decided_at": now, "expires_at": expires_at, "reason": cause.reason}
    if transition(session, row, Trigger.APPROVE, now=now, cause=cause, values=values) is None:
        return False
    outbox.enqueue(session, new_event("elevation.approved", ElevationApproved(
        request_id=row.id, checkout_id=row.checkout_id, secret_id=row.secret_id, approver_id=approver_id,
        expires_at=expires_at, policy=policy, approvers=approvers), source=SOURCE))
    log.info("elevation.approved", request_id=row.id, checkout_id=row.checkout_id, host=row.host,
             approver_id=approver_id, expires_at=expires_at.isoformat())
    return True


def deny(session: Session, row: Request, *, approver_id: str, reason: str, now: datetime, cause: Cause) -> bool:
    values = {"approver_id": approver_id, "decided_at": now, "reason": reason, "ended_at": now}
    if transition(session, row, Trigger.DENY, now=now, cause=cause, values=values) is None:
        return False
    publish_denied(session, row, approver_id=approver_id, reason=reason)
    return True


def record_denied(session: Session, row: Request, *, reason: str, now: datetime, event_id: str) -> None:
    """Record a new request that a rule refuses: it is inserted DENIED, never PENDING."""
    row.state = State.DENIED.value
    row.approver_id, row.reason, row.decided_at, row.ended_at = POLICY, reason, now, now
    session.add(row)
    audit.record(session, at=now, action="requested", actor=row.requester_id, request_id=row.id,
                 to_state=State.DENIED.value, event_id=event_id, reason=reason, details={"by": POLICY})
    publish_denied(session, row, approver_id=POLICY, reason=reason)


def publish_denied(session: Session, row: Request, *, approver_id: str, reason: str) -> None:
    outbox.enqueue(session, new_event("elevation.denied", ElevationDenied(
        request_id=row.id, reason=reason[:2000], approver_id=approver_id), source=SOURCE))
    log.info("elevation.denied", request_id=row.id, checkout_id=row.checkout_id, host=row.host,
             approver_id=approver_id, reason=reason)


def cancel(session: Session, row: Request, *, end_trigger: str, now: datetime, cause: Cause) -> bool:
    """A PENDING request that can no longer be decided (checkout over, checked in, configuration removed)."""
    values = {"end_trigger": end_trigger, "ended_at": now}
    if transition(session, row, Trigger.END, now=now, cause=cause, values=values) is None:
        return False
    outbox.enqueue(session, new_event("elevation.cancelled", ElevationCancelled(
        request_id=row.id, reason=cause.reason or end_trigger), source=SOURCE))
    log.info("elevation.cancelled", request_id=row.id, checkout_id=row.checkout_id, host=row.host,
             end_trigger=end_trigger)
    return True
