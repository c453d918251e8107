"""The elevator's second transaction: write what the host work came to, with its audit and its event.

Success: ELEVATING -> ELEVATED and `elevation.elevated`. Failure: ELEVATING -> REVOKING with
failed=True, so the reaper makes sure nothing was left in the group and ends it FAILED; and
`elevation.failed`. Either compare-and-set loses when a check-in, expiry or operator revoke moved
the row on while we worked; then the caller must compensate (see handler.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from services.elevator.claim import ACTOR, Claim
from services.elevator.membership import Outcome
from shared import logs
from shared.db import audit, outbox
from shared.db.models import Request
from shared.db.transitions import Cause, load, transition
from shared.events import ElevationElevated, ElevationFailed, new_event
from shared.states import State, Trigger

SOURCE = "jit/elevator"

log = logs.get_logger()


@dataclass(frozen=True)
class Recorded:
    state: State  # the request's state after this transaction
    won: bool  # False: the request had moved on while we worked


def record(session: Session, claim: Claim, outcome: Outcome, *, now: datetime, event_id: str) -> Recorded:
    request = load(session, claim.request_id)
    if request is None:  # rows are never deleted; a vanished row is a broken database, not a race
        raise RuntimeError(f"request {claim.request_id} disappeared while elevating")
    cause = Cause(ACTOR, event_id, outcome.error)
    if outcome.error is None:
        if _elevated(session, request, claim, outcome, now, cause):
            return Recorded(State.ELEVATED, won=True)
    elif _failed(session, request, outcome.error, now, cause):
        return Recorded(State.REVOKING, won=True)
    return _superseded(session, request, outcome, now, event_id)


def _elevated(session: Session, request: Request, claim: Claim, outcome: Outcome, now: datetime,
              cause: Cause) -> bool:
    details = {"changed": outcome.changed, "pre_existing": outcome.pre_existing, "holders": list(outcome.holders)}
    values = {"elevated_at": now, "pre_existing": outcome.pre_existing, "lease_until": None, "add_deadline": None}
    if transition(session, request, Trigger.ELEVATION_SUCCEEDED, now=now, cause=cause, values=values,
                  details=details) is None:
        return False
    if outcome.pre_existing:
        audit.record(session, at=now, action="elevation.pre_existing", actor=ACTOR, request_id=request.id,
                     event_id=cause.event_id, reason="account was already a member; it will not be removed")
    outbox.enqueue(session, new_event("elevation.elevated", ElevationElevated(
        request_id=request.id, secret_id=request.secret_id, host=request.host, account=claim.account,
        group=claim.group, elevated_at=now, expires_at=claim.expires_at, pre_existing=outcome.pre_existing,
    ), source=SOURCE))
    log.info("elevation.elevated", pre_existing=outcome.pre_existing, changed=outcome.changed)
    return True


def _failed(session: Session, request: Request, error: str, now: datetime, cause: Cause) -> bool:
    values = {"failed": True, "error": error, "last_error": error, "revoking_since": now, "next_attempt_at": now,
              "lease_until": None, "add_deadline": None}
    if transition(session, request, Trigger.ELEVATION_FAILED, now=now, cause=cause, values=values) is None:
        return False
    outbox.enqueue(session, new_event("elevation.failed", ElevationFailed(request_id=request.id, error=error[:2000]),
                                      source=SOURCE))
    log.error("elevation.failed", error=error)
    return True


def _superseded(session: Session, request: Request, outcome: Outcome, now: datetime, event_id: str) -> Recorded:
    state = State(request.state)
    if state is State.REVOKING:
        # Our add may have landed after the reaper's removal: our add is over, so let the reaper look again
        # now and confirm what it then finds.
        session.execute(update(Request).where(Request.id == request.id, Request.state == State.REVOKING.value)
                        .values(next_attempt_at=now, add_deadline=None).execution_options(synchronize_session=False))
    audit.record(session, at=now, action="elevation.superseded", actor=ACTOR, request_id=request.id,
                 from_state=state.value, event_id=event_id,
                 reason=f"request became {state.value} while the add was in flight",
                 details={"added": outcome.added, "error": outcome.error})
    log.warning("elevation.superseded", state=state.value, added=outcome.added)
    return Recorded(state, won=False)
