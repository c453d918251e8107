"""The elevator's first transaction: may this approved request be elevated now? If so, claim it.

The event only names the request; everything decided here comes from the database. In one
transaction: the inbox entry, the checks, and either the audited refusal or the compare-and-set
APPROVED -> ELEVATING with a lease that covers the whole in-process attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from shared import logs
from shared.db import audit, inbox
from shared.db.models import CheckIn, Request
from shared.db.targets import Target, TargetError, target_for
from shared.db.transitions import Cause, load, transition
from shared.settings import Settings
from shared.states import State, Trigger
from shared.winrm.client import DEADLINE_SLACK_SEC

CONSUMER = "elevator"
ACTOR = "jit-elevator"

log = logs.get_logger()


@dataclass(frozen=True)
class Claim:
    """A request this process moved to ELEVATING, and what it needs to do the work."""

    request_id: str
    checkout_id: str
    secret_id: str
    host: str
    account: str
    group: str
    expires_at: datetime
    budget: float  # seconds of in-process retrying allowed
    add_until: datetime  # no add of this grant may land after this (its lease; the reaper relies on it)
    target: Target | None  # None when the configuration no longer reaches the host (see `error`)
    error: str | None = None


LEASE_MARGIN_SECONDS = 5.0


def call_bound(settings: Settings) -> float:
    """The longest one WinRM call of the adapter can take, verification and cleanup included."""
    return settings.winrm_deadline_seconds + DEADLINE_SLACK_SEC


def retry_budget(settings: Settings, now: datetime, expires_at: datetime) -> float:
    """Retrying ends `elevation_margin_seconds` before the window does, and never runs past the setting."""
    left = (expires_at - now).total_seconds() - settings.elevation_margin_seconds
    return max(0.0, min(settings.elevation_retry_seconds, left))


def refusal(session: Session, request: Request, now: datetime) -> str | None:
    """Why this request may not be elevated now, or None if it may."""
    if request.state != State.APPROVED:
        return f"request is {request.state}, not APPROVED"
    if request.expires_at is None or request.expires_at <= now:
        return f"elevation window ended at {request.expires_at}"
    checkin = session.get(CheckIn, request.checkout_id)
    if checkin is not None:
        return f"checkout {request.checkout_id} was checked in ({checkin.reason})"
    return None


def claim(session: Session, request_id: str, event_id: str, now: datetime, settings: Settings) -> Claim | None:
    """Inbox, checks and APPROVED -> ELEVATING; None when there is nothing to do (all audited or logged)."""
    if not inbox.first_time(session, CONSUMER, event_id, now):
        log.info("elevation.duplicate")
        return None
    request = load(session, request_id)
    if request is None:
        audit.record(session, at=now, action="elevation.unknown_request", actor=ACTOR, request_id=request_id,
                     event_id=event_id, reason="no such request")
        log.warning("elevation.unknown_request")
        return None
    reason = refusal(session, request, now)
    if reason is None:
        expires_at = request.expires_at or now
        budget = retry_budget(settings, now, expires_at)
        # The lease covers the retry budget plus a last resolve and a last add, each bounded by the adapter
        # (`call_bound`); every add is sent early enough to have returned by then (see membership.py), so
        # the reaper's sweeper, which takes an ELEVATING row back once it has expired, never races an add.
        lease = now + timedelta(seconds=budget + 2 * call_bound(settings) + LEASE_MARGIN_SECONDS)
        target, error = _target(session, request)
        values: dict[str, object] = {"lease_until": lease}
        if target is not None:  # the grant keeps how to reach its host, whatever the configuration becomes
            values["target"] = target.snapshot()
        started = transition(session, request, Trigger.START_ELEVATION, now=now, cause=Cause(ACTOR, event_id),
                             values=values, details={"retry_budget_seconds": round(budget, 3)})
        if started is not None:
            return Claim(
                request_id=request.id, checkout_id=request.checkout_id, secret_id=request.secret_id,
                host=request.host, account=target.account if target else (request.account or ""),
                group=target.group if target else (request.group or ""),
                expires_at=expires_at, budget=budget, add_until=lease, target=target, error=error)
        reason = "lost the race: the request changed while being claimed"
    audit.record(session, at=now, action="elevation.refused", actor=ACTOR, request_id=request.id,
                 from_state=request.state, event_id=event_id, reason=reason)
    log.warning("elevation.refused", reason=reason, state=request.state, checkout_id=request.checkout_id)
    return None


def _target(session: Session, request: Request) -> tuple[Target | None, str | None]:
    try:
        return target_for(session, request), None
    except TargetError as exc:
        return None, f"cannot reach host {request.host} to add {request.account}: {exc}"
