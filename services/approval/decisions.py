"""`elevation.decided`: apply an approver's decision to a PENDING request, or refuse it with a reason.

Only an internal approver holding the approver permissions, who is not the requester, may decide;
the first valid decision wins (compare-and-set) and later ones are audited as ignored. A decision
that arrives before its request is parked in the audit trail (`decision.parked`) and applied, in
order, when the request is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.approval.effects import approve, cancel, deny, lock_request
from shared.db import audit
from shared.db.facts import is_checked_in, secret_facts, user_facts
from shared.db.models import AuditEntry, Request, Task
from shared.db.transitions import Cause, load
from shared.events import ElevationDecided, Event
from shared.logs import get_logger
from shared.rules import POLICY, check_approver, eligibility
from shared.states import State

log = get_logger()
PARKED = "decision.parked"


@dataclass(frozen=True)
class Vote:
    event_id: str
    approver_id: str
    decision: str  # approve | deny
    reason: str | None


def on_decided(session: Session, event: Event, now: datetime) -> None:
    data = event.data
    assert isinstance(data, ElevationDecided)
    vote = Vote(event.id, data.approver_id, data.decision, data.reason)
    lock_request(session, data.request_id)
    row = load(session, data.request_id)
    if row is None:
        # Delivery is in any order: the request may still be on its way. Keep the decision for it.
        audit.record(session, at=now, action=PARKED, actor=vote.approver_id, request_id=data.request_id,
                     event_id=event.id, reason="request not recorded yet; applied when it arrives",
                     details={"decision": vote.decision, "reason": vote.reason})
        log.info(PARKED, request_id=data.request_id, approver_id=vote.approver_id, decision=vote.decision)
        return
    apply_vote(session, row, vote, now)


def apply_parked(session: Session, row: Request, now: datetime) -> None:
    """Apply decisions that arrived before `row` was recorded, oldest first (the first valid one wins)."""
    parked = session.scalars(
        select(AuditEntry).where(AuditEntry.request_id == row.id, AuditEntry.action == PARKED).order_by(AuditEntry.id)
    ).all()
    for entry in parked:
        details = entry.details or {}
        apply_vote(session, row, Vote(entry.event_id or "", entry.actor, str(details.get("decision")),
                                      details.get("reason")), now)


def apply_vote(session: Session, row: Request, vote: Vote, now: datetime) -> None:
    cause = Cause(vote.approver_id, vote.event_id or None, vote.reason)
    if row.state != State.PENDING.value:
        if row.decided_at is not None and row.approver_id not in (None, POLICY):
            _record(session, row, vote, now, "decision.ignored",
                    f"request was already decided by {row.approver_id}; the first decision wins")
        else:
            _record(session, row, vote, now, "decision.refused", f"request is {row.state}, not PENDING")
        return
    refusal = check_approver(vote.approver_id, user_facts(session, vote.approver_id), row.requester_id)
    if refusal is not None:
        _record(session, row, vote, now, "decision.refused", refusal)
        return
    ended = _window_over(session, row, now)
    if ended is not None:
        _record(session, row, vote, now, "decision.refused", f"the checkout is over ({ended})")
        cancel(session, row, end_trigger=ended, now=now, cause=Cause("jit-approval", vote.event_id or None,
                                                                      f"checkout over before a decision ({ended})"))
        return
    if vote.decision == "approve":
        task = session.get(Task, row.task_id) if row.task_id else None
        if task is None:
            _record(session, row, vote, now, "decision.refused", f"task {row.task_id} is no longer configured")
            return
        # Eligibility is checked again: permissions or the task may have changed since the request.
        ineligible = eligibility(row.secret_id, secret_facts(session, row.secret_id), row.requester_id,
                                 user_facts(session, row.requester_id))
        if ineligible is not None:
            _record(session, row, vote, now, "decision.refused", f"no longer eligible: {ineligible}")
            deny(session, row, approver_id=POLICY, reason=f"no longer eligible: {ineligible}", now=now,
                 cause=Cause(POLICY, vote.event_id or None, ineligible))
            return
        applied = approve(session, row, approver_id=vote.approver_id, window_seconds=task.approval_window_seconds,
                          now=now, cause=cause)
    else:
        reason = vote.reason or f"denied by {vote.approver_id}"
        applied = deny(session, row, approver_id=vote.approver_id, reason=reason, now=now,
                       cause=Cause(vote.approver_id, vote.event_id or None, reason))
    if not applied:
        _record(session, row, vote, now, "decision.ignored", "another decision changed the request first")


def _window_over(session: Session, row: Request, now: datetime) -> str | None:
    if is_checked_in(session, row.checkout_id):
        return "checked_in"
    if row.checkout_expires_at <= now:
        return "checkout_expired"
    return None


def _record(session: Session, row: Request, vote: Vote, now: datetime, action: str, reason: str) -> None:
    audit.record(session, at=now, action=action, actor=vote.approver_id, request_id=row.id,
                 from_state=row.state, to_state=row.state, event_id=vote.event_id or None, reason=reason,
                 details={"decision": vote.decision, "reason": vote.reason})
    log.warning(action, request_id=row.id, checkout_id=row.checkout_id, host=row.host,
                approver_id=vote.approver_id, decision=vote.decision, reason=reason)
