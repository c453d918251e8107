"""The elevator's event handler: claim, do the host work, record.

Load -> decide -> persist -> hand effects to ports, with the WinRM port injected. Nothing here runs
WinRM inside a transaction: claim commits before the first call, the hold is a short transaction of its
own between resolving and adding, and record opens after the last call.

A check-in or expiry may end the request while our add is in flight. The ledger makes that safe
without any compensation here: the hold was durable before the add was sent and keeps the membership
"ours"; the reaper does not confirm the removal while our add may still land (`add_until`), and once
our add has returned, `record` brings the reaper's next attempt forward. A SIGKILL at any point leaves
the same durable facts, and the reaper's sweeper and reconciler finish the job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import cast

from sqlalchemy.orm import Session, sessionmaker

from services.elevator.claim import Claim, claim
from services.elevator.membership import Membership, Outcome
from services.elevator.record import record
from shared import logs
from shared.clock import Clock, SystemClock
from shared.db import ledger
from shared.db.engine import transaction
from shared.db.transitions import load
from shared.events import ElevationApproved, Event
from shared.settings import Settings
from shared.states import State
from shared.winrm import WinRMPort
from shared.winrm.endpoint import Resolved

ROUTING_KEYS = ("elevation.approved",)

log = logs.get_logger()


class GrantRows:
    """The `Grant` of one claimed request: each call is a short transaction of its own."""

    def __init__(self, factory: sessionmaker[Session], claimed: Claim, clock: Clock, reconcile_in: float) -> None:
        self._factory = factory
        self._claimed = claimed
        self._clock = clock
        self._reconcile_in = reconcile_in

    def now(self) -> datetime:
        return self._clock.now()

    def take_hold(self, resolved: Resolved, looked_at: datetime) -> float | None:
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

    def still_elevating(self) -> bool:
        with transaction(self._factory) as session:
            request = load(session, self._claimed.request_id)
            return request is not None and request.state == State.ELEVATING.value


class Elevator:
    def __init__(self, factory: sessionmaker[Session], winrm: WinRMPort, settings: Settings,
                 clock: Clock | None = None, *, environ: Mapping[str, str] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._factory = factory
        self._settings = settings
        self._clock = clock or SystemClock()
        self._membership = Membership(winrm, settings, environ=environ, sleep=sleep)

    def process(self, event: Event) -> None:
        """Handle one `elevation.approved`; runs on a consumer worker thread, returns when all is committed."""
        data = cast(ElevationApproved, event.data)
        with transaction(self._factory) as session:
            claimed = claim(session, data.request_id, event.id, self._clock.now(), self._settings)
        if claimed is None:
            return
        with logs.bound(request_id=claimed.request_id, checkout_id=claimed.checkout_id, host=claimed.host):
            log.info("elevation.started", retry_budget_seconds=round(claimed.budget, 3))
            outcome = self._work(claimed)
            with transaction(self._factory) as session:
                record(session, claimed, outcome, now=self._clock.now(), event_id=event.id)

    def _work(self, claimed: Claim) -> Outcome:
        if claimed.target is None:
            return Outcome(error=claimed.error)
        grant = GrantRows(self._factory, claimed, self._clock, self._settings.reconcile_interval_seconds)
        return self._membership.elevate(claimed.target, claimed.budget, grant)
