"""`elevation.decided`: count an approver's decision on a PENDING request, or refuse it with a reason.

Only an internal approver holding the approver permissions, who is not the requester, may decide.
A task may need N distinct approvals (`approvals_required`): each approver counts once (`votes`),
the N-th approval approves, and a denial denies (`deny: any`) or denials from a majority of N do
(`deny: majority`). Later decisions are audited as ignored. A decision that arrives before its
request is parked in the audit trail (`decision.parked`) and applied, in order, when the request is
recorded. A decision naming an `extension_id` is about that extension (`extensions.py`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from services.approval import extensions, parked, votes
from services.approval.effects import approve, cancel, deny, lock_request
from services.approval.votes import Vote
from shared.db import audit
from shared.db.facts import is_checked_in, secret_facts, user_facts
from shared.db.models import Request, Task
from shared.db.transitions import Cause, load
from shared.events import ElevationDecided, Event
from shared.logs import get_logger
from shared.rules import POLICY, Outcome, check_approver, eligibility, tally
from shared.states import State

log = get_logger()
PARKED = parked.PARKED
DECISION_TIMEOUT = "decision_timeout"

__all__ = ["Vote", "apply_parked", "apply_vote", "on_decided"]


def on_decided(session: Session, event: Event, now: datetime) -> None:
    data = event.data
    assert isinstance(data, ElevationDecided)
    vote = Vote(event.id, data.approver_id, data.decision, data.reason, data.extension_id)
    lock_request(session, data.request_id)
    row = load(session, data.request_id)
    if row is None:
        # Delivery is in any order: the request may still be on its way. Keep the decision for it, a while.
        parked.park(session, data.request_id, vote, event.publisher, now)
        return
    apply_vote(session, row, vote, now)


def apply_parked(session: Session, row: Request, now: datetime, seconds: float = parked.DEFAULT_SECONDS) -> None:
    """Apply decisions that arrived before `row` was recorded, oldest first; drop (audited) stale ones."""
    for vote in list(parked.take(session, row, now, seconds)):
        apply_vote(session, row, vote, now)


def apply_vote(session: Session, row: Request, vote: Vote, now: datetime) -> None:
    if vote.extension_id:
        extensions.decide(session, row, vote, now)
        return
    if row.state != State.PENDING.value:
        if row.decided_at is not None and row.approver_id not in (None, POLICY):
            record(session, row, vote, now, "decision.ignored",
                   f"request was already decided by {row.approver_id}; the first decision wins")
        else:
            record(session, row, vote, now, "decision.refused", f"request is {row.state}, not PENDING")
        return
    refusal = check_approver(vote.approver_id, user_facts(session, vote.approver_id), row.requester_id)
    if refusal is not None:
        record(session, row, vote, now, "decision.refused", refusal)
        return
    ended = _window_over(session, row, now)
    if ended is not None:
        reason = DECISION_TIMEOUT if ended == DECISION_TIMEOUT else f"checkout over before a decision ({ended})"
        record(session, row, vote, now, "decision.refused", f"too late: {ended}")
        cancel(session, row, end_trigger=ended, now=now, cause=Cause("jit-approval", vote.event_id or None, reason))
        return
    task = session.get(Task, row.task_id) if row.task_id else None
    if vote.decision == "approve" and (refused := _approval_refusal(session, row, task, vote, now)):
        record(session, row, vote, now, "decision.refused", refused)
        return
    if not votes.record(session, row.id, vote, now):
        record(session, row, vote, now, "decision.ignored",
               f"{vote.approver_id} already decided this request; one approver counts once")
        return
    _count(session, row, task, vote, now)


def _approval_refusal(session: Session, row: Request, task: Task | None, vote: Vote, now: datetime) -> str | None:
    if task is None:
        return f"task {row.task_id} is no longer configured"
    # Eligibility is checked again: permissions or the task may have changed since the request.
    ineligible = eligibility(row.secret_id, secret_facts(session, row.secret_id), row.requester_id,
                             user_facts(session, row.requester_id))
    if ineligible is not None:
        deny(session, row, approver_id=POLICY, reason=f"no longer eligible: {ineligible}", now=now,
             cause=Cause(POLICY, vote.event_id or None, ineligible))
        return f"no longer eligible: {ineligible}"
    return None


def _count(session: Session, row: Request, task: Task | None, vote: Vote, now: datetime) -> None:
    """The vote is recorded: approve, deny, or say how many approvals are still needed."""
    required, policy = (task.approvals_required, task.deny_policy) if task is not None else (1, "any")
    approvers, deniers = votes.cast(session, row.id)
    result = tally(approvers, deniers, required, policy)
    cause = Cause(vote.approver_id, vote.event_id or None, vote.reason)
    if result.outcome is Outcome.PENDING:
        audit.record(session, at=now, action="decision.counted", actor=vote.approver_id, request_id=row.id,
                     from_state=row.state, to_state=row.state, event_id=vote.event_id or None, reason=vote.reason,
                     details={"decision": vote.decision, "approvals": result.approvals, "denials": result.denials,
                              "approvals_needed": result.needed, "approvals_required": required})
        log.info("decision.counted", request_id=row.id, approver_id=vote.approver_id, decision=vote.decision,
                 approvals=result.approvals, approvals_needed=result.needed)
        return
    if result.outcome is Outcome.APPROVE:
        assert task is not None  # _approval_refusal
        applied = approve(session, row, approver_id=vote.approver_id, window_seconds=task.approval_window_seconds,
                          now=now, cause=cause, approvers=sorted(approvers) if required > 1 else None)
    else:
        reason = vote.reason or f"denied by {vote.approver_id}"
        if policy == "majority" and required > 1:
            reason = f"denied by a majority of approvers ({', '.join(sorted(deniers))}): {reason}"
        applied = deny(session, row, approver_id=vote.approver_id, reason=reason, now=now,
                       cause=Cause(vote.approver_id, vote.event_id or None, reason))
    if not applied:
        record(session, row, vote, now, "decision.ignored", "another decision changed the request first")


def _window_over(session: Session, row: Request, now: datetime) -> str | None:
    if is_checked_in(session, row.checkout_id):
        return "checked_in"
    if row.checkout_expires_at <= now:
        return "checkout_expired"
    if row.decide_by is not None and row.decide_by <= now:
        return DECISION_TIMEOUT
    return None


def record(session: Session, row: Request, vote: Vote, now: datetime, action: str, reason: str) -> None:
    """Audit (and log at warning level) a decision that changed nothing."""
    audit.record(session, at=now, action=action, actor=vote.approver_id, request_id=row.id,
                 from_state=row.state, to_state=row.state, event_id=vote.event_id or None, reason=reason,
                 details={"decision": vote.decision, "reason": vote.reason, "extension_id": vote.extension_id})
    log.warning(action, request_id=row.id, checkout_id=row.checkout_id, host=row.host,
                approver_id=vote.approver_id, decision=vote.decision, extension_id=vote.extension_id, reason=reason)
