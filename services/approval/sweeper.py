"""Undecided requests do not wait forever: PENDING requests whose checkout window ended, or whose task's
decision timeout passed (`decide_by`, reason `decision_timeout`), are cancelled.

Runs periodically in every replica. Rows are claimed with `FOR UPDATE SKIP LOCKED` on PostgreSQL
(SQLite's transactions hold the write lock), and each cancel is a compare-and-set, so two replicas
never cancel one request twice.
"""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from services.approval.effects import cancel
from shared.clock import Clock
from shared.db.engine import transaction
from shared.db.models import DECIDE_BY_SQL, Request
from shared.db.transitions import Cause
from shared.states import State

BATCH = 200


def cancel_expired_pending(factory: sessionmaker[Session], clock: Clock) -> int:
    """Cancel up to BATCH PENDING requests past each deadline; returns how many were cancelled."""
    now = clock.now()
    cancelled = 0
    with transaction(factory) as session:
        # Served by the partial index ix_requests_pending_deadline (state = 'PENDING').
        stmt = (select(Request).where(Request.state == State.PENDING.value, Request.checkout_expires_at <= now)
                .order_by(Request.checkout_expires_at).limit(BATCH))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        cause = Cause("jit-approval", None, "checkout window ended before a decision")
        for row in session.scalars(stmt).all():
            cancelled += cancel(session, row, end_trigger="checkout_expired", now=now, cause=cause)
        # Served by ix_requests_decision_deadline; the same literal predicate, so SQLite uses it.
        stmt = (select(Request).where(text(DECIDE_BY_SQL), Request.decide_by <= now)
                .order_by(Request.decide_by).limit(BATCH))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        timeout = Cause("jit-approval", None, "decision_timeout")
        for row in session.scalars(stmt).all():
            cancelled += cancel(session, row, end_trigger="decision_timeout", now=now, cause=timeout)
    return cancelled
