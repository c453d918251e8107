"""`elevation.requested`: record the request as PENDING, APPROVED by policy, or DENIED by a rule.

The request row snapshots what it is for (task, account, group) so later configuration edits cannot
redirect it, and the deadline of its decision (`decide_by`, from the task's `decision_timeout_seconds`);
its host is recorded in canonical form (`shared.hosts`). A request id seen before is a
duplicate (inbox and primary key): one effect.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.approval.decisions import apply_parked
from services.approval.effects import approve, lock_request, record_denied
from services.approval.parked import DEFAULT_SECONDS
from shared.db import audit
from shared.db.facts import request_facts, task_of
from shared.db.models import Request, Secret
from shared.db.transitions import Cause
from shared.events import ElevationRequested, Event
from shared.hosts import canonical_host
from shared.logs import get_logger
from shared.rules import NOT_REQUIRED_POLICY, POLICY, Outcome, decide_request, decision_deadline
from shared.states import State
from shared.winrm.names import member_name

log = get_logger()
ACTIVE_CHECKOUT = "this checkout already has an active request"


def new_row(session: Session, data: ElevationRequested, now: datetime) -> Request:
    secret = session.get(Secret, data.secret_id)
    task = task_of(session, data.secret_id)
    return Request(
        id=data.request_id, checkout_id=data.checkout_id, secret_id=data.secret_id, requester_id=data.requester_id,
        host=canonical_host(data.host), justification=data.justification, ticket=data.ticket,
        duration_seconds=data.duration_seconds,
        state=State.PENDING.value, task_id=task.id if task else None,
        account=member_name(secret.account, secret.domain) if secret else None, group=task.group if task else None,
        requested_at=now, checkout_expires_at=data.checkout_expires_at, pre_existing=False, failed=False,
        decide_by=decision_deadline(now, task.decision_timeout_seconds) if task and task.approval_required else None,
        attempts=0, updated_at=now,
    )


def on_requested(session: Session, event: Event, now: datetime, parked_seconds: float = DEFAULT_SECONDS) -> None:
    data = event.data
    assert isinstance(data, ElevationRequested)
    lock_request(session, data.request_id)
    if session.get(Request, data.request_id) is not None:
        log.info("request.duplicate", request_id=data.request_id, checkout_id=data.checkout_id)
        return
    facts = request_facts(session, secret_id=data.secret_id, requester_id=data.requester_id, host=data.host,
                          checkout_id=data.checkout_id, checkout_expires_at=data.checkout_expires_at)
    decision = decide_request(facts, now)
    if decision.outcome is Outcome.DENY:
        record_denied(session, new_row(session, data, now), reason=decision.reason, now=now, event_id=event.id)
        return
    try:
        with session.begin_nested():
            row = new_row(session, data, now)
            session.add(row)
    except IntegrityError:
        # Another request for this checkout was recorded concurrently; the partial unique index said no.
        record_denied(session, new_row(session, data, now), reason=ACTIVE_CHECKOUT, now=now, event_id=event.id)
        return
    audit.record(session, at=now, action="requested", actor=data.requester_id, request_id=row.id,
                 to_state=State.PENDING.value, event_id=event.id, reason=data.justification)
    log.info("elevation.requested", request_id=row.id, checkout_id=row.checkout_id, host=row.host,
             requester_id=row.requester_id)
    if decision.outcome is Outcome.APPROVE:
        assert facts.secret is not None and facts.secret.task is not None
        approve(session, row, approver_id=POLICY, window_seconds=facts.secret.task.approval_window_seconds, now=now,
                cause=Cause(POLICY, event.id, decision.reason), policy=NOT_REQUIRED_POLICY)
        return
    apply_parked(session, row, now, parked_seconds)
