"""Extensions: `elevation.extend_requested` and the decisions on it; the granted time moves `expires_at`.

The task says what an extension needs (`extension`: refused, automatic, or approval by
`approvals_required` distinct approvers, as the request did) and the most time an elevation may have
in total; the checkout's end bounds it always (`shared.rules.plan_extension`). Granting is a
compare-and-set on the request row, only while it is APPROVED, ELEVATING or ELEVATED and its window is
still open: once the reaper has begun ending it (REVOKING, in the same row), the extension is refused
and audited. The reaper's sweeper reads `expires_at` from the database, so the new end is followed.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from services.approval import votes
from services.approval.effects import SOURCE, lock_request
from services.approval.votes import Vote
from shared.db import audit, outbox
from shared.db.facts import user_facts
from shared.db.models import Extension, Request, Task
from shared.db.transitions import Cause, load
from shared.events import ElevationExtended, ElevationExtendRequested, ElevationExtensionDenied, Event, new_event
from shared.logs import get_logger
from shared.rules import POLICY, Outcome, check_approver, plan_extension, requester_refusal, tally
from shared.states import EXPIRABLE, State, Trigger, next_state

log = get_logger()
AUTOMATIC_POLICY = "extension_automatic"


def on_extend_requested(session: Session, event: Event, now: datetime) -> None:
    data = event.data
    assert isinstance(data, ElevationExtendRequested)
    lock_request(session, data.request_id)
    if session.get(Extension, data.extension_id) is not None:
        log.info("extension.duplicate", request_id=data.request_id, extension_id=data.extension_id)
        return
    ext = Extension(id=data.extension_id, request_id=data.request_id, requester_id=data.requester_id,
                    duration_seconds=data.duration_seconds, justification=data.justification, state="PENDING",
                    requested_at=now, event_id=event.id)
    session.add(ext)
    audit.record(session, at=now, action="extension.requested", actor=data.requester_id, request_id=data.request_id,
                 event_id=event.id, reason=data.justification,
                 details={"extension_id": ext.id, "duration_seconds": ext.duration_seconds})
    row = load(session, data.request_id)
    task = session.get(Task, row.task_id) if row is not None and row.task_id else None
    refusal = _request_refusal(session, row, task, data)
    if refusal is not None:
        refuse(session, ext, approver_id=POLICY, reason=refusal, now=now, event_id=event.id)
        return
    assert row is not None and task is not None
    if task.extension == "automatic":
        grant(session, row, ext, task, approver_id=POLICY, now=now, cause=Cause(POLICY, event.id, AUTOMATIC_POLICY),
              policy=AUTOMATIC_POLICY)
        return
    log.info("extension.pending", request_id=row.id, extension_id=ext.id, requester_id=ext.requester_id)


def _request_refusal(session: Session, row: Request | None, task: Task | None,
                     data: ElevationExtendRequested) -> str | None:
    if row is None:
        return f"request {data.request_id} is unknown"
    if data.requester_id != row.requester_id:
        return f"only the requester ({row.requester_id}) may ask to extend request {row.id}"
    if task is None:
        return f"task {row.task_id} is no longer configured"
    if task.extension == "refused":
        return f"task {task.id} does not allow extensions"
    if next_state(State(row.state), Trigger.EXTEND) is None:
        return f"request {row.id} is {row.state}; only an active elevation can be extended"
    return requester_refusal(row.requester_id, user_facts(session, row.requester_id))


def decide(session: Session, row: Request, vote: Vote, now: datetime) -> None:
    """An approver's decision on a PENDING extension of `row` (a decision with `extension_id`)."""
    ext = session.get(Extension, vote.extension_id, populate_existing=True)
    if ext is None or ext.request_id != row.id:
        _audit_vote(session, row, vote, now, "decision.refused",
                    f"extension {vote.extension_id} of {row.id} is unknown")
        return
    if ext.state != "PENDING":
        _audit_vote(session, row, vote, now, "decision.ignored", f"extension {ext.id} is already {ext.state}")
        return
    refusal = check_approver(vote.approver_id, user_facts(session, vote.approver_id), row.requester_id)
    if refusal is not None:
        _audit_vote(session, row, vote, now, "decision.refused", refusal)
        return
    if not votes.record(session, row.id, vote, now):
        _audit_vote(session, row, vote, now, "decision.ignored", f"{vote.approver_id} already decided extension "
                                                                   f"{ext.id}; one approver counts once")
        return
    task = session.get(Task, row.task_id) if row.task_id else None
    required, policy = (task.approvals_required, task.deny_policy) if task is not None else (1, "any")
    approvers, deniers = votes.cast(session, row.id, ext.id)
    result = tally(approvers, deniers, required, policy)
    if result.outcome is Outcome.PENDING:
        _audit_vote(session, row, vote, now, "decision.counted", f"{result.needed} more approval(s) needed")
    elif result.outcome is Outcome.DENY or task is None:
        refuse(session, ext, approver_id=vote.approver_id, reason=vote.reason or f"denied by {vote.approver_id}",
               now=now, event_id=vote.event_id or None)
    else:
        grant(session, row, ext, task, approver_id=vote.approver_id, now=now,
              cause=Cause(vote.approver_id, vote.event_id or None, vote.reason))


def grant(session: Session, row: Request, ext: Extension, task: Task, *, approver_id: str, now: datetime,
          cause: Cause, policy: str | None = None) -> bool:
    """Move the window's end by compare-and-set, or refuse the extension (the elevation is ending, or at a bound)."""
    state = State(row.state)
    if next_state(state, Trigger.EXTEND) is None or row.expires_at is None:
        return refuse(session, ext, approver_id=POLICY, reason=f"the elevation is {row.state}: it is ending",
                      now=now, event_id=cause.event_id)
    previous = row.expires_at
    plan = plan_extension(expires_at=previous, approved_at=row.decided_at or row.requested_at,
                          checkout_expires_at=row.checkout_expires_at, seconds=ext.duration_seconds,
                          max_total_seconds=task.extension_max_total_seconds, now=now)
    if plan.expires_at is None:
        return refuse(session, ext, approver_id=POLICY, reason=plan.reason, now=now, event_id=cause.event_id)
    # The reaper's sweeper ends due rows in the database (locking them on PostgreSQL): whichever commits
    # first wins, and a row it has moved to REVOKING, or whose window has passed, is never extended.
    result = session.execute(
        update(Request).where(Request.id == row.id, Request.state.in_([s.value for s in EXPIRABLE]),
                              Request.expires_at == previous, Request.expires_at > now,
                              Request.expiry_event_id.is_(None))
        .values(expires_at=plan.expires_at, updated_at=now).execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        current = load(session, row.id)
        return refuse(session, ext, approver_id=POLICY, now=now, event_id=cause.event_id,
                      reason=f"the elevation ended first (now {current.state if current else 'gone'})")
    row.expires_at = plan.expires_at
    ext.state, ext.decided_at, ext.approver_id, ext.reason = "EXTENDED", now, approver_id, plan.reason
    ext.previous_expires_at, ext.expires_at = previous, plan.expires_at
    audit.record(session, at=now, action=Trigger.EXTEND.value, actor=cause.actor, request_id=row.id,
                 from_state=state.value, to_state=state.value, event_id=cause.event_id, reason=plan.reason,
                 details={"extension_id": ext.id, "previous_expires_at": previous.isoformat(),
                          "expires_at": plan.expires_at.isoformat(), "policy": policy})
    outbox.enqueue(session, new_event("elevation.extended", ElevationExtended(
        request_id=row.id, extension_id=ext.id, expires_at=plan.expires_at, previous_expires_at=previous,
        approver_id=approver_id, policy=policy), source=SOURCE))
    log.info("elevation.extended", request_id=row.id, extension_id=ext.id, approver_id=approver_id,
             expires_at=plan.expires_at.isoformat(), previous_expires_at=previous.isoformat())
    return True


def refuse(session: Session, ext: Extension, *, approver_id: str, reason: str, now: datetime,
           event_id: str | None) -> bool:
    """The extension is DENIED (by an approver, the task, a bound, or an ending elevation): audited and published."""
    ext.state, ext.decided_at, ext.approver_id, ext.reason = "DENIED", now, approver_id, reason
    audit.record(session, at=now, action="extension.denied", actor=approver_id, request_id=ext.request_id,
                 event_id=event_id, reason=reason, details={"extension_id": ext.id})
    outbox.enqueue(session, new_event("elevation.extension_denied", ElevationExtensionDenied(
        request_id=ext.request_id, extension_id=ext.id, reason=reason[:2000], approver_id=approver_id),
        source=SOURCE))
    log.warning("elevation.extension_denied", request_id=ext.request_id, extension_id=ext.id,
                approver_id=approver_id, reason=reason)
    return False


def _audit_vote(session: Session, row: Request, vote: Vote, now: datetime, action: str, reason: str) -> None:
    audit.record(session, at=now, action=action, actor=vote.approver_id, request_id=row.id, from_state=row.state,
                 to_state=row.state, event_id=vote.event_id or None, reason=reason,
                 details={"decision": vote.decision, "reason": vote.reason, "extension_id": vote.extension_id})
    log.info(action, request_id=row.id, approver_id=vote.approver_id, extension_id=vote.extension_id, reason=reason)
