"""The answer to a status query: `jitctl status --json` (contract section 4) plus the request it is about.

`answer(session, query)` reads what `shared.rules.connection_status` decides on, the user's latest
active request for the secret (and checkout, when given) and, while PENDING, its votes. Read-only.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.approval import votes
from shared.db.facts import secret_facts, user_facts
from shared.db.models import Request
from shared.events import StatusQuery, StatusReply, format_time
from shared.rules import connection_status
from shared.states import ACTIVE, State


def answer(session: Session, query: StatusQuery) -> StatusReply:
    secret = secret_facts(session, query.secret_id)
    stmt = (select(Request).where(Request.secret_id == query.secret_id, Request.requester_id == query.user_id,
                                  Request.state.in_([s.value for s in ACTIVE]))
            .order_by(Request.requested_at.desc(), Request.id.desc()).limit(1))
    if query.checkout_id is not None:
        stmt = stmt.where(Request.checkout_id == query.checkout_id)
    row = session.scalars(stmt).first()
    needed = None
    if row is not None and row.state == State.PENDING.value and secret is not None and secret.task is not None:
        approvers, _ = votes.cast(session, row.id)
        needed = max(0, secret.task.approvals_required - len(approvers))
    status = connection_status(query.secret_id, secret, query.user_id, user_facts(session, query.user_id),
                               row.state if row is not None else None, approvals_needed=needed)
    return StatusReply(
        status=status.status.value, action=status.action, reason=status.reason,
        request_id=row.id if row is not None else None, state=row.state if row is not None else None,
        expires_at=format_time(row.expires_at) if row is not None and row.expires_at is not None else None,
        ready=status.ready, approvals_needed=needed,
    )
