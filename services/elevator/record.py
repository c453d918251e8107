"""The elevator's last transaction: write what the host work came to, with its ledger entry, audit and event.

First the ledger: the add has returned, so no add of this grant can land any more (and, for the grant
that decides it, the membership's baseline is now known). Then the request: success moves ELEVATING ->
ELEVATED and publishes `elevation.elevated`; failure moves ELEVATING -> REVOKING with failed=True (the
hold is released; the reaper makes sure nothing was left and ends it FAILED) and publishes
`elevation.failed`. Either compare-and-set loses when a check-in, expiry or operator revoke moved the
row on while we worked: then the reaper is told to look again now.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from services.elevator.claim import ACTOR, Claim
from services.elevator.membership import Outcome
from shared import logs
from shared.db import audit, ledger, outbox
from shared.db.models import Request
from shared.db.transitions import Cause, load, transition
from shared.events import ElevationElevated, ElevationFailed, new_event
from shared.states import State, Trigger

SOURCE = "jit/elevator"

log = logs.get_logger()


def record(session: Session, claim: Claim, outcome: Outcome, *, now: datetime, event_id: str) -> State:
    """Returns the request's state after this transaction."""
    baseline = ledger.record_add(session, claim.request_id, changed=outcome.changed if outcome.added else None,
                                 add_calls=outcome.add_calls, now=now)
    request = load(session, claim.request_id)
    if request is None:  # rows are never deleted; a vanished row is a broken database, not a race
        raise RuntimeError(f"request {claim.request_id} disappeared while elevating")
    cause = Cause(ACTOR, event_id, outcome.error)
    if outcome.error is None and outcome.held:
        if _elevated(session, request, claim, outcome, now, cause, pre_existing=baseline == "yes"):
            return State.ELEVATED
    elif outcome.error is not None and _failed(session, request, outcome.error, now, cause):
        return State.REVOKING
    return _superseded(session, request, outcome, now, event_id)


def _elevated(session: Session, request: Request, claim: Claim, outcome: Outcome, now: datetime,
              cause: Cause, *, pre_existing: bool) -> bool:
    resolved = outcome.resolved
    assert resolved is not None
    details = {"changed": outcome.changed, "pre_existing": pre_existing, "account_sid": resolved.account_sid,
               "group_sid": resolved.group_sid, "add_calls": outcome.add_calls}
    values = {"elevated_at": now, "pre_existing": pre_existing, "lease_until": None}
    if transition(session, request, Trigger.ELEVATION_SUCCEEDED, now=now, cause=cause, values=values,
                  details=details) is None:
        return False
    if pre_existing:
        audit.record(session, at=now, action="elevation.pre_existing", actor=ACTOR, request_id=request.id,
                     event_id=cause.event_id, reason="account was already a member; it will not be removed")
    outbox.enqueue(session, new_event("elevation.elevated", ElevationElevated(
        request_id=request.id, secret_id=request.secret_id, host=request.host, account=claim.account,
        group=claim.group, elevated_at=now, expires_at=claim.expires_at, pre_existing=pre_existing,
    ), source=SOURCE))
    log.info("elevation.elevated", pre_existing=pre_existing, changed=outcome.changed,
             account_sid=resolved.account_sid)
    return True


def _failed(session: Session, request: Request, error: str, now: datetime, cause: Cause) -> bool:
    values = {"failed": True, "error": error, "last_error": error, "revoking_since": now, "next_attempt_at": now,
              "lease_until": None}
    if transition(session, request, Trigger.ELEVATION_FAILED, now=now, cause=cause, values=values) is None:
        return False
    ledger.release(session, request.id, now)
    outbox.enqueue(session, new_event("elevation.failed", ElevationFailed(request_id=request.id, error=error[:2000]),
                                      source=SOURCE))
    log.error("elevation.failed", error=error)
    return True


def _superseded(session: Session, request: Request, outcome: Outcome, now: datetime, event_id: str) -> State:
    state = State(request.state)
    if state is State.REVOKING:
        # The reaper may be waiting for our add to return before it confirms: let it look again now.
        session.execute(update(Request).where(Request.id == request.id, Request.state == State.REVOKING.value,
                                              Request.lease_until.is_(None))
                        .values(next_attempt_at=now).execution_options(synchronize_session=False))
    if outcome.added and outcome.resolved is not None:
        ledger.reconcile_soon(session, request.host, outcome.resolved.group_sid, now)
    audit.record(session, at=now, action="elevation.superseded", actor=ACTOR, request_id=request.id,
                 from_state=state.value, event_id=event_id,
                 reason=f"request became {state.value} while the host work was in flight",
                 details={"added": outcome.added, "error": outcome.error})
    log.warning("elevation.superseded", state=state.value, added=outcome.added)
    return state
