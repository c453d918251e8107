"""Performing a revocation: claim the row (a lease), remove the membership over WinRM, then record
the outcome. No WinRM call happens inside a transaction.

A claim is a compare-and-set on `next_attempt_at`: whoever moves it from "due" to "now + lease"
owns the attempt, on any engine (PostgreSQL batch claims add `FOR UPDATE SKIP LOCKED`; SQLite's
BEGIN IMMEDIATE serializes). A worker that dies leaves the row due again when the lease ends, and
the sweeper of any replica re-drives it; the removal is idempotent and the final transition is a
compare-and-set, so the request is REVOKED (and audited) exactly once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from services.reaper.plan import NOTHING_HELD, Plan, make_plan
from services.reaper.policy import SOURCE, next_attempt, stall_due
from services.reaper.sessions import end_sessions, ended_sessions
from shared import logs
from shared.clock import Clock
from shared.db import audit, ledger, outbox
from shared.db.engine import transaction
from shared.db.models import Request
from shared.db.outlasting import Outlasting
from shared.db.targets import TargetError
from shared.db.transitions import Cause, load, transition
from shared.events import ElevationRevocationStalled, ElevationRevoked, new_event
from shared.retrying import call, retrying
from shared.settings import Settings
from shared.states import State, Trigger
from shared.winrm import Revocation, WinRMPort

log = logs.get_logger()
REVOKING = State.REVOKING.value


def due_condition(now: datetime) -> Any:
    # A REVOKING row without next_attempt_at (left by another writer) is due, never forgotten.
    # The literal predicate of ix_requests_due_revocation, so SQLite uses the index (see sweeper.py).
    return text("state = 'REVOKING'") & or_(Request.next_attempt_at <= now, Request.next_attempt_at.is_(None))


def due_revocations_query(now: datetime, limit: int) -> Any:
    return select(Request.id).where(due_condition(now)).order_by(Request.next_attempt_at).limit(limit)


@dataclass
class Outcome:
    removed: bool = False
    sessions: list[dict[str, Any]] = field(default_factory=list)
    sessions_error: str | None = None


class Revoker:
    def __init__(self, factory: sessionmaker[Session], port: WinRMPort, settings: Settings, clock: Clock,
                 stopping: threading.Event | None = None) -> None:
        self.factory = factory
        self.port = port
        self.settings = settings
        self.clock = clock
        self.stopping = stopping or threading.Event()
        # Per host, a count of removals that succeeded: a backoff sleep ends early when it moves.
        self._answered: dict[str, int] = {}
        self._answer = threading.Condition()
        self._outlasting = Outlasting(clock, self.stopping.wait, "revocation.database", self.stopping)

    def _sleeper(self, host: str) -> Any:
        """A backoff sleep that ends early when the host answers another revocation (it is back) or the
        daemon stops; the row is durable either way, so cutting a sleep short is always safe."""

        def sleep(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            with self._answer:
                seen = self._answered.get(host, 0)
                while not self.stopping.is_set() and self._answered.get(host, 0) == seen:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._answer.wait(min(left, 0.5))

        return sleep

    def _host_answered(self, host: str) -> None:
        with self._answer:
            self._answered[host] = self._answered.get(host, 0) + 1
            self._answer.notify_all()

    def lease_until(self, now: datetime) -> datetime:
        """Long enough for the in-process retries plus one last attempt, so no other replica retakes the
        row while we still work on it (a repeat would be harmless, only wasted)."""
        return now + timedelta(seconds=self.settings.lease_seconds + self.settings.retry_in_process_seconds)

    def _lease(self, now: datetime) -> dict[str, Any]:
        until = self.lease_until(now)
        return {"lease_until": until, "next_attempt_at": until}

    def claim(self, request_id: str) -> bool:
        """Take one due revocation for this worker; False if it is not due or someone else has it."""
        now = self.clock.now()
        with transaction(self.factory) as session:
            result = session.execute(update(Request).where(Request.id == request_id, due_condition(now))
                                     .values(**self._lease(now)).execution_options(synchronize_session=False))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def claim_due(self, limit: int) -> list[str]:
        """Claim up to `limit` due revocations (the sweeper's re-drive), oldest first."""
        if limit <= 0:
            return []
        now = self.clock.now()
        with transaction(self.factory) as session:
            query = due_revocations_query(now, limit)
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(session.scalars(query))
            if ids:
                session.execute(update(Request).where(Request.id.in_(ids), due_condition(now))
                                .values(**self._lease(now)).execution_options(synchronize_session=False))
        return ids

    def attempt(self, request_id: str, *, in_process: bool = True) -> None:
        if self.claim(request_id):
            self.work(request_id, in_process=in_process)

    def work(self, request_id: str, *, in_process: bool) -> None:
        """One claimed attempt: plan, remove (with in-process retries if asked), record the outcome.

        The row is ours until the lease ends, so each transaction rides out a database outage in place
        (`revocation.database.retrying`) rather than leaving the claim to be waited out."""
        until = self.clock.now() + timedelta(seconds=self.settings.lease_seconds)
        planned = self._outlasting.run("plan", until, lambda: self._plan(request_id))
        if planned is None:
            return
        plan, failure = planned
        if failure is not None:
            self._outlasting.run("record_failure", until, lambda: self._record_failure(request_id, failure, tries=1))
            return
        assert plan is not None
        with logs.bound(request_id=plan.request_id, checkout_id=plan.checkout_id, host=plan.host,
                        attempt=plan.attempts + 1):
            tries = [0]

            def failed(exc: BaseException) -> None:
                tries[0] += 1
                log.warning("revocation.attempt.failed", error=str(exc), attempt=plan.attempts + tries[0])

            try:
                outcome = self._remove(plan, in_process, failed)
            except Exception as exc:
                error = exc  # `exc` is unbound once the except block ends
                self._outlasting.run("record_failure", until,
                                     lambda: self._record_failure(plan.request_id, error, tries=tries[0]))
                return
            self._outlasting.run("finish", until, lambda: self.finish(plan, outcome, tries=tries[0] + 1))

    def _plan(self, request_id: str) -> tuple[Plan | None, Exception | None] | None:
        """The claimed request's plan, or why it has none (its target is unknown); None if it has ended."""
        with transaction(self.factory) as session:
            request = load(session, request_id)
            if request is None or request.state != REVOKING:
                return None
            with logs.bound(request_id=request.id, checkout_id=request.checkout_id, host=request.host,
                            attempt=request.attempts + 1):
                try:
                    return make_plan(session, request), None
                except TargetError as exc:
                    return None, exc

    def remove_once(self, plan: Plan) -> Outcome:
        """One removal attempt of `plan` (by SID, verified), without retries: raises when the host does not confirm."""
        return self._remove(plan, False, lambda _exc: None)

    def _remove(self, plan: Plan, in_process: bool, failed: Any) -> Outcome:
        if plan.keep is not None:
            log.info("revocation.membership_kept", membership_kept=plan.keep, holders=plan.holders)
            return Outcome()
        assert plan.target is not None  # make_plan: a removal always has a target
        creds = plan.target.credentials()
        endpoint = plan.target.endpoint
        sids: list[tuple[str, str]] = []
        logoff = plan.target.on_revoke == "logoff"

        def remove() -> Revocation:
            if not sids:
                if plan.legacy:
                    resolved = self.port.resolve(endpoint, creds, plan.group, plan.account)
                    sids.append((resolved.group_sid, resolved.account_sid))
                else:
                    assert plan.group_sid is not None and plan.account_sid is not None
                    sids.append((plan.group_sid, plan.account_sid))
            group_sid, account_sid = sids[0]
            # One run: remove, verify, and the account's sessions (logged off per on_revoke).
            return self.port.revoke(endpoint, creds, group_sid, account_sid, plan.account, logoff)

        budget = self.settings.retry_in_process_seconds if in_process else 0.0
        policy = retrying(initial=self.settings.retry_initial_seconds, cap=self.settings.retry_max_seconds,
                          budget=budget, on_retry=lambda _n, exc, _s: failed(exc), sleep=self._sleeper(plan.host))
        try:
            revocation = call(remove, policy)
        except Exception as exc:
            failed(exc)
            raise
        self._host_answered(plan.host)
        outcome = Outcome(removed=revocation.removed)
        if revocation.sessions_listed:
            outcome.sessions, outcome.sessions_error = ended_sessions(revocation, plan.target.on_revoke)
        else:  # the run's answer was lost and only the removal could be re-verified: look at the sessions now
            outcome.sessions, outcome.sessions_error = end_sessions(self.port, endpoint, creds, plan.account,
                                                                    plan.target.on_revoke)
        return outcome

    def finish(self, plan: Plan, outcome: Outcome, *, tries: int, cause: Cause | None = None,
               extra: dict[str, Any] | None = None) -> bool:
        """Record the confirmed removal (REVOKED, or FAILED for a failed elevation) with its event;
        False when the request had already ended (another worker finished first) or an add of ours may
        still land on the membership (then it is looked at again once that add has returned)."""
        now = self.clock.now()
        with transaction(self.factory) as session:
            request = load(session, plan.request_id)
            if request is None or request.state != REVOKING:
                log.info("revocation.already_done")
                return False
            attempts = request.attempts + tries
            pending = None if plan.membership_id is None else ledger.add_in_flight_until(
                session, plan.membership_id, now)
            if pending is not None and plan.keep != ledger.KEPT_OTHER_HOLDERS:
                # An add of ours may still land after this removal: look again once it has returned (the
                # elevator then brings next_attempt_at forward), or at its bound at the latest.
                session.execute(update(Request).where(Request.id == request.id).values(
                    attempts=attempts, lease_until=None, next_attempt_at=pending)
                    .execution_options(synchronize_session=False))
                log.info("revocation.awaiting_elevator", add_until=pending.isoformat())
                return False
            details: dict[str, Any] = {"host_said": "removed" if outcome.removed else "not a member",
                                       "attempts": attempts, "sessions": outcome.sessions,
                                       "account_sid": plan.account_sid, "group_sid": plan.group_sid}
            if plan.keep is not None:
                details = {"membership_kept": plan.keep, "holders": plan.holders, "attempts": attempts}
            if outcome.sessions_error:
                details["sessions_error"] = outcome.sessions_error
            details.update(extra or {})
            new = transition(session, request, Trigger.REMOVAL_CONFIRMED, now=now,
                             cause=cause or Cause(actor="reaper", reason=plan.end_trigger), details=details, values={
                                 "ended_at": now, "attempts": attempts, "lease_until": None,
                                 "next_attempt_at": None, "last_error": None})
            if new is None:
                log.info("revocation.already_done")
                return False
            if plan.keep is None and plan.membership_id is not None:
                ledger.settle(session, plan.membership_id, now)
            kept = None if plan.keep == NOTHING_HELD else plan.keep
            outbox.enqueue(session, new_event("elevation.revoked", ElevationRevoked(
                request_id=plan.request_id, secret_id=plan.secret_id, host=plan.host, account=plan.account,
                group=plan.group, revoked_at=now, attempts=attempts, trigger=plan.end_trigger,
                membership_kept=kept, sessions=outcome.sessions), source=SOURCE))
            if attempts > 1:
                self._wake_host(session, plan.host, now)
        log.info("elevation.revoked", state=new.value, attempts=attempts, trigger=plan.end_trigger,
                 membership_kept=plan.keep, sessions=len(outcome.sessions), account_sid=plan.account_sid)
        return True

    def _wake_host(self, session: Session, host: str, now: datetime) -> None:
        """The host answers again: bring its other backed-off revocations forward to the next sweep."""
        session.execute(update(Request).where(
            Request.state == REVOKING, Request.host == host, Request.attempts > 0, Request.lease_until.is_(None),
            Request.next_attempt_at > now,
        ).values(next_attempt_at=now).execution_options(synchronize_session=False))

    def _record_failure(self, request_id: str, exc: BaseException, *, tries: int) -> None:
        now = self.clock.now()
        error = str(exc)[:2000] or type(exc).__name__
        with transaction(self.factory) as session:
            request = load(session, request_id)
            if request is None or request.state != REVOKING:
                return
            attempts = request.attempts + max(tries, 1)
            values: dict[str, Any] = {
                "attempts": attempts, "last_error": error, "lease_until": None,
                "next_attempt_at": next_attempt(now, attempts, initial=self.settings.retry_initial_seconds,
                                                cap=self.settings.retry_max_seconds),
                "updated_at": now}
            since = request.revoking_since or request.updated_at
            if request.revoking_since is None:
                values["revoking_since"] = since
            stalled_at = request.stalled_at if request.stalled_at else None
            stalled = stall_due(now, since, stalled_at, self.settings.stall_threshold_seconds)
            if stalled:
                values["stalled_at"] = now
            session.execute(update(Request).where(Request.id == request_id, Request.state == REVOKING)
                            .values(**values).execution_options(synchronize_session=False))
            if stalled:
                audit.record(session, at=now, action="revocation_stalled", actor="reaper", request_id=request_id,
                             from_state=REVOKING, to_state=REVOKING, reason=error,
                             details={"attempts": attempts, "since": since.isoformat()})
                outbox.enqueue(session, new_event("elevation.revocation_stalled", ElevationRevocationStalled(
                    request_id=request_id, attempts=attempts, last_error=error, since=since), source=SOURCE))
        if stalled:
            log.error("revocation.stalled", attempts=attempts, last_error=error, since=since.isoformat())
        log.warning("revocation.retry_scheduled", attempts=attempts, error=error,
                    next_attempt_at=values["next_attempt_at"].isoformat())
