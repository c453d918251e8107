"""The three triggers that end an elevation, each one transaction: inbox, checkins, transitions, outbox.

`secret.checked_in` ends every active request of the checkout (and records the checkout so that no
elevation starts for it later), `elevation.expired` and `elevation.revoke_requested` end one request.
The database decides what is affected; the event only says which checkout or request to look at.
A PENDING request becomes CANCELLED; an APPROVED, ELEVATING or ELEVATED one becomes REVOKING, its
ledger hold is released in the same transaction, and it is claimed (leased) by the caller at once when
the caller will run the removal itself (`lease_until`), so no sweeper can claim it in between and leave
it waiting for a lease; `revocation.py` performs the removal after the commit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from services.reaper.policy import CONSUMER, SOURCE
from shared import logs
from shared.db import inbox, ledger, outbox
from shared.db.models import CheckIn, Request
from shared.db.transitions import Cause, load, transition
from shared.events import (
    ElevationCancelled,
    ElevationExpired,
    ElevationRevokeRequested,
    Event,
    SecretCheckedIn,
    new_event,
)
from shared.states import ACTIVE, State, Trigger

log = logs.get_logger()


def end_request(session: Session, request: Request, *, now: datetime, end_trigger: str, cause: Cause,
                lease_until: datetime | None = None, values: dict[str, Any] | None = None,
                release: bool = True) -> State | None:
    """End one active request by compare-and-set; returns its new state or None (already ended).

    `lease_until`: the caller claims the revocation until then (it starts it right after the commit);
    without it the revocation is due at once for any reaper's sweeper. `values`: more columns to set
    in the same compare-and-set. `release=False`: the caller releases the hold itself, later in the same
    transaction (`ledger.release_all` of a whole batch).

    A compare-and-set that loses to a concurrent transition (on PostgreSQL: an approval committed while
    this transaction waited on the row, e.g. the N-th approval racing a check-in) is tried again on the
    row as now committed, so the end is never lost to a change from one active state to another."""
    for _ in range(len(State)):  # each retry follows a real transition: the machine is acyclic but REVOKING
        before = request.state
        new = _end_once(session, request, now=now, end_trigger=end_trigger, cause=cause, lease_until=lease_until,
                        values=values or {}, release=release)
        if new is not None:
            return new
        fresh = load(session, request.id)
        if fresh is None or fresh.state == before:
            return None
        request = fresh
    return None


def _end_once(session: Session, request: Request, *, now: datetime, end_trigger: str, cause: Cause,
              lease_until: datetime | None, values: dict[str, Any], release: bool) -> State | None:
    state = State(request.state)
    if state is State.PENDING:
        new = transition(session, request, Trigger.END, now=now, cause=cause,
                         values={"end_trigger": end_trigger, "ended_at": now, **values})
        if new is not None:
            outbox.enqueue(session, new_event("elevation.cancelled", ElevationCancelled(
                request_id=request.id, reason=end_trigger), source=SOURCE))
            log.info("elevation.cancelled", request_id=request.id, reason=end_trigger)
        return new
    if state not in (State.APPROVED, State.ELEVATING, State.ELEVATED):
        return None  # REVOKING is already being ended; terminal states have nothing left to do
    # An ELEVATING row may have an add in flight: its hold's add_until keeps the reaper from confirming
    # before that add has returned (shared/db/ledger.py).
    new = transition(session, request, Trigger.END, now=now, cause=cause, values={
        "end_trigger": end_trigger, "revoking_since": now, "next_attempt_at": lease_until or now,
        "lease_until": lease_until, "last_error": None, "stalled_at": None, **values,
    })
    if new is not None and release:
        ledger.release(session, request.id, now)
        log.info("revocation.started", request_id=request.id, checkout_id=request.checkout_id, host=request.host,
                 trigger=end_trigger, from_state=state.value)
    return new


def record_checkin(session: Session, data: SecretCheckedIn, event_id: str, now: datetime) -> None:
    """Remember the checkout as checked in (first check-in wins; a repeat changes nothing)."""
    values = {"checkout_id": data.checkout_id, "secret_id": data.secret_id, "reason": data.reason,
              "checked_in_at": now, "event_id": event_id}
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(CheckIn).values(values).on_conflict_do_nothing())


def on_checked_in(session: Session, event: Event, now: datetime, lease_until: datetime | None = None) -> list[str]:
    """Handle `secret.checked_in`; returns the ids of requests now REVOKING (claimed until `lease_until`
    when given, to revoke after commit)."""
    data = event.data
    assert isinstance(data, SecretCheckedIn)
    if not inbox.first_time(session, CONSUMER, event.id, now):
        log.info("event.duplicate")
        return []
    record_checkin(session, data, event.id, now)
    requests = session.scalars(select(Request).where(
        Request.checkout_id == data.checkout_id, Request.state.in_([s.value for s in ACTIVE]),
    ).execution_options(populate_existing=True)).all()
    cause = Cause(actor="connection-workflow", event_id=event.id, reason=data.reason)
    revoking = []
    for request in requests:
        if request.secret_id != data.secret_id:
            log.warning("checkin.secret_mismatch", request_id=request.id, request_secret_id=request.secret_id,
                        event_secret_id=data.secret_id)
            continue
        if end_request(session, request, now=now, end_trigger=data.reason, cause=cause,
                       lease_until=lease_until) is State.REVOKING:
            revoking.append(request.id)
    if not requests:
        log.info("checkin.no_active_request")
    return revoking


def on_expired(session: Session, event: Event, now: datetime, lease_until: datetime | None = None, *,
               tolerance: timedelta) -> list[str]:
    """Handle `elevation.expired` (ours or upstream's). Ending early is the safe direction, so an early
    claim is honoured, but logged: the database's bounds are the truth."""
    data = event.data
    assert isinstance(data, ElevationExpired)
    request = _first_delivery(session, event, data.request_id, now, unknown="expiry.unknown_request")
    if request is None:
        return []
    if request.expires_at is not None and request.expires_at > now + tolerance:
        log.warning("expiry.early", expires_at=request.expires_at.isoformat())
    cause = Cause(actor="sweeper" if event.source == SOURCE else event.source, event_id=event.id, reason=data.reason)
    new = end_request(session, request, now=now, end_trigger=data.reason, cause=cause, lease_until=lease_until)
    return [request.id] if new is State.REVOKING else []


def on_revoke_requested(session: Session, event: Event, now: datetime,
                        lease_until: datetime | None = None) -> list[str]:
    """Handle `elevation.revoke_requested`: an operator ends the elevation; audited with who and why."""
    data = event.data
    assert isinstance(data, ElevationRevokeRequested)
    request = _first_delivery(session, event, data.request_id, now, unknown="revoke.unknown_request")
    if request is None:
        return []
    new = end_request(session, request, now=now, end_trigger="operator",
                      cause=Cause(actor=data.operator_id, event_id=event.id, reason=data.reason),
                      lease_until=lease_until)
    if new is None:
        log.info("revoke.not_active", state=request.state)
    return [request.id] if new is State.REVOKING else []


def _first_delivery(session: Session, event: Event, request_id: str, now: datetime, *, unknown: str) -> Request | None:
    """The request an event names, or None for a duplicate delivery (inbox) or an unknown request (logged)."""
    if not inbox.first_time(session, CONSUMER, event.id, now):
        log.info("event.duplicate")
        return None
    request = load(session, request_id)
    if request is None:
        log.warning(unknown)
    return request
