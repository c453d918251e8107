"""The elevator's event handler: claim, do the host work, record.

Load -> decide -> persist -> hand effects to ports, with the WinRM port injected. Nothing here runs
WinRM inside a transaction: claim commits before the first call (and, for an account whose SIDs an
earlier grant learnt, takes the hold in the same transaction: two transactions per elevation), a first
grant's hold is a short transaction of its own between resolving and adding, and record opens after the
last call.

The claim is the only transaction that consumes the event (the inbox), so every later transaction rides
out a database outage in place (`Outlasting`): retrying the whole event would find it a duplicate and
drop the grant. Taking hold retries only while an add could still be sent before the lease ends; the
record retries until the lease is long over (the sweeper then owns the row and the record's
compare-and-set loses, which it handles).

A check-in or expiry may end the request while our add is in flight. The ledger makes that safe
without any compensation here: the hold was durable before the add was sent and keeps the membership
"ours"; the reaper does not confirm the removal while our add may still land (`add_until`), and once
our add has returned, `record` brings the reaper's next attempt forward. A SIGKILL at any point leaves
the same durable facts, and the reaper's sweeper and reconciler finish the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.elevator.claim import Claim, call_bound, claim
from services.elevator.membership import KnownHold, Membership, Outcome
from services.elevator.record import record
from shared import logs
from shared.clock import Clock, SystemClock
from shared.db import ledger
from shared.db.engine import transaction
from shared.db.models import Hold, Request
from shared.db.models import Membership as MembershipRow
from shared.db.outlasting import Outlasting
from shared.db.transitions import load
from shared.events import ElevationApproved, Event
from shared.settings import Settings
from shared.states import State
from shared.winrm import WinRMPort
from shared.winrm.endpoint import Resolved

ROUTING_KEYS = ("elevation.approved",)
# The record keeps retrying this long past the lease: by then the sweeper has taken the row back.
RECORD_PAST_LEASE = timedelta(seconds=60)
T = TypeVar("T")

log = logs.get_logger()
# A look this old is never trusted to decide a baseline: a hold taken before the one-run add leaves the
# baseline to that add's own answer (ledger.record_add), exactly as for a look that may have seen our add.
NO_LOOK = datetime(2000, 1, 1, tzinfo=UTC)


class GrantRows:
    """The `Grant` of one claimed request: each call is a short transaction of its own, which outlasts a
    database outage while an add could still be sent (then it propagates: nothing more is sent)."""

    def __init__(self, factory: sessionmaker[Session], claimed: Claim, clock: Clock, reconcile_in: float,
                 outlasting: Outlasting, last_add: datetime, known: KnownHold | None) -> None:
        self._factory = factory
        self._known = known
        self._claimed = claimed
        self._clock = clock
        self._reconcile_in = reconcile_in
        self._outlasting = outlasting
        self._last_add = last_add

    def _retried(self, step: str, fn: Callable[[], T]) -> T:
        return self._outlasting.run(step, self._last_add, fn)

    def now(self) -> datetime:
        return self._clock.now()

    def take_hold(self, resolved: Resolved, looked_at: datetime) -> float | None:
        return self._retried("take_hold", lambda: self._take_hold(resolved, looked_at))

    def _take_hold(self, resolved: Resolved, looked_at: datetime) -> float | None:
        claimed = self._claimed
        assert claimed.target is not None
        now = self._clock.now()
        with transaction(self._factory) as session:
            request = load(session, claimed.request_id)
            if request is None:
                return None
            hold = ledger.take_hold(session, request, host=request.host, group_sid=resolved.group_sid,
                                    account_sid=resolved.account_sid, account=resolved.account_name,
                                    looked_at=looked_at, was_member=resolved.member,
                                    target=claimed.target.snapshot(), now=now, add_until=claimed.add_until,
                                    reconcile_in=self._reconcile_in)
        if hold is None:
            return None
        log.info("elevation.hold.taken", account_sid=resolved.account_sid, group_sid=resolved.group_sid,
                 decides_baseline=hold.decides_baseline)
        return (claimed.add_until - now).total_seconds()

    def known_hold(self) -> KnownHold | None:
        return self._known

    def drop_known_hold(self, known: KnownHold) -> None:
        return self._retried("drop_known_hold", lambda: self._drop_known_hold(known))

    def _drop_known_hold(self, known: KnownHold) -> None:
        """The name no longer maps to the known SID and nothing was added (the one-run answer said so on its
        first and only send): give the membership back as it was, unless another grant holds it or an add
        may still land on it. The hold itself moves when the grant takes hold of the right membership."""
        now = self._clock.now()
        with transaction(self._factory) as session:
            query = _membership_query(self._claimed.host, known.group_sid, known.account_sid)
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update()
            row = session.scalars(query).first()
            hold = session.get(Hold, self._claimed.request_id, populate_existing=True)
            if row is None or hold is None or hold.membership_id != row.id:
                return
            hold.held, hold.add_until, hold.decides_baseline, hold.released_at = False, None, False, now
            session.flush()
            if ledger.active_holders(session, row.id) or ledger.add_in_flight_until(session, row.id, now):
                return
            row.baseline, row.ours, row.settled_at = known.before
            row.updated_at = now
        log.info("elevation.known_sid.changed", account_sid=known.account_sid)

    def still_elevating(self) -> bool:
        return self._retried("still_elevating", lambda: self._still_elevating())

    def _still_elevating(self) -> bool:
        with transaction(self._factory) as session:
            request = load(session, self._claimed.request_id)
            return request is not None and request.state == State.ELEVATING.value


def take_known_hold(session: Session, claimed: Claim, now: datetime, reconcile_in: float) -> KnownHold | None:
    """In the claim's transaction: if an earlier grant of this account (same host, account and group as
    configured) learnt its SIDs and the ledger has its membership, take hold of that membership now, before
    the one-run add. None: no SIDs known, resolve first. `seconds_left` is None if the request has ended."""
    assert claimed.target is not None
    known = session.execute(
        select(Request.account_sid, Request.group_sid)
        .where(Request.host == claimed.host, Request.account == claimed.account,
               Request.group == claimed.group, Request.account_sid.is_not(None),
               Request.group_sid.is_not(None), Request.id != claimed.request_id)
        .order_by(Request.updated_at.desc()).limit(1)).first()
    if known is None:
        return None
    account_sid, group_sid = str(known[0]), str(known[1])
    row = session.scalars(_membership_query(claimed.host, group_sid, account_sid)).first()
    if row is None:
        return None
    before = (row.baseline, row.ours, row.settled_at)
    request = session.get(Request, claimed.request_id)
    hold = None if request is None else ledger.take_hold(
        session, request, host=request.host, group_sid=group_sid, account_sid=account_sid,
        account=row.account, looked_at=NO_LOOK, was_member=False, target=claimed.target.snapshot(),
        now=now, add_until=claimed.add_until, reconcile_in=reconcile_in)
    seconds_left = None if hold is None else (claimed.add_until - now).total_seconds()
    return KnownHold(group_sid, account_sid, row.account, seconds_left, before,
                     decides_baseline=hold is not None and hold.decides_baseline)


def _membership_query(host: str, group_sid: str, account_sid: str) -> Any:
    query = select(MembershipRow).where(MembershipRow.host == host, MembershipRow.group_sid == group_sid,
                                        MembershipRow.account_sid == account_sid)
    return query.execution_options(populate_existing=True)


class Elevator:
    def __init__(self, factory: sessionmaker[Session], winrm: WinRMPort, settings: Settings,
                 clock: Clock | None = None, *, environ: Mapping[str, str] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._factory = factory
        self._settings = settings
        self._clock = clock or SystemClock()
        self._membership = Membership(winrm, settings, environ=environ, sleep=sleep)
        self._outlasting = Outlasting(self._clock, sleep, "elevation.database")

    def process(self, event: Event) -> None:
        """Handle one `elevation.approved`; runs on a consumer worker thread, returns when all is committed."""
        data = cast(ElevationApproved, event.data)
        known: KnownHold | None = None
        with transaction(self._factory) as session:
            now = self._clock.now()
            claimed = claim(session, data.request_id, event.id, now, self._settings)
            if claimed is not None and claimed.target is not None:
                known = take_known_hold(session, claimed, now, self._settings.reconcile_interval_seconds)
        if claimed is None:
            return
        with logs.bound(request_id=claimed.request_id, checkout_id=claimed.checkout_id, host=claimed.host):
            log.info("elevation.started", retry_budget_seconds=round(claimed.budget, 3))
            if known is not None and known.seconds_left is not None:
                log.info("elevation.hold.taken", account_sid=known.account_sid, group_sid=known.group_sid,
                         decides_baseline=known.decides_baseline, sids="known")
            outcome = self._work(claimed, known)

            def write() -> None:
                with transaction(self._factory) as session:
                    record(session, claimed, outcome, now=self._clock.now(), event_id=event.id)

            self._outlasting.run("record", claimed.add_until + RECORD_PAST_LEASE, write)

    def _work(self, claimed: Claim, known: KnownHold | None) -> Outcome:
        if claimed.target is None:
            return Outcome(error=claimed.error)
        # A hold is worth retrying for only while an add sent after it could still return before the lease.
        last_add = claimed.add_until - timedelta(seconds=call_bound(self._settings))
        grant = GrantRows(self._factory, claimed, self._clock, self._settings.reconcile_interval_seconds,
                          self._outlasting, last_add, known)
        return self._membership.elevate(claimed.target, claimed.budget, grant)
