"""The elevator's event handler: claim, do the host work, record; compensate if a check-in overtook us.

Load -> decide -> persist -> hand effects to ports, with the WinRM port injected. Nothing here runs
WinRM inside a transaction: claim commits before the first call, record opens after the last.

Compensation: a check-in or expiry may move the row ELEVATING -> REVOKING while our add is in
flight, and the reaper may even remove the account and finish (REVOKED) before our add lands on
the host. So when our final compare-and-set loses after an add was sent, we remove the account
ourselves (unless another active request of ours holds the same membership), verified by the
adapter, and audit `elevation.compensated`. A still-REVOKING row is also re-queued for the reaper.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import cast

from sqlalchemy.orm import Session, sessionmaker

from services.elevator.claim import ACTOR, Claim, claim
from services.elevator.membership import Membership, Outcome
from services.elevator.record import record
from shared import logs
from shared.clock import Clock, SystemClock
from shared.db import audit
from shared.db.engine import transaction
from shared.db.models import Request
from shared.db.targets import TargetError, other_holders
from shared.db.transitions import load
from shared.events import ElevationApproved, Event
from shared.settings import Settings
from shared.states import State
from shared.winrm import WinRMError, WinRMPort

ROUTING_KEYS = ("elevation.approved",)
KEEPING = frozenset({State.ELEVATING.value, State.ELEVATED.value})

log = logs.get_logger()


class RequestRows:
    """The `RequestView` of one request, for the host work: each read is a short transaction of its own."""

    def __init__(self, factory: sessionmaker[Session], request_id: str) -> None:
        self._factory = factory
        self._request_id = request_id

    def others(self) -> list[Request]:
        with transaction(self._factory) as session:
            request = load(session, self._request_id)
            return [] if request is None else other_holders(session, request)

    def holders(self) -> list[tuple[str, bool]]:
        return [(other.id, other.pre_existing) for other in self.others()]

    def still_elevating(self) -> bool:
        with transaction(self._factory) as session:
            request = load(session, self._request_id)
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
                recorded = record(session, claimed, outcome, now=self._clock.now(), event_id=event.id)
            if not recorded.won and outcome.added:
                self._compensate(claimed, event.id)

    def _work(self, claimed: Claim) -> Outcome:
        if claimed.target is None:
            return Outcome(error=claimed.error)
        return self._membership.elevate(claimed.target, claimed.budget, RequestRows(self._factory, claimed.request_id))

    def _compensate(self, claimed: Claim, event_id: str) -> None:
        """Take the account back out of the group after a lost race (see the module docstring)."""
        # As in the reaper's ref-count: a REVOKING holder is ending and never keeps a membership alive.
        holders = [h.id for h in RequestRows(self._factory, claimed.request_id).others() if h.state in KEEPING]
        removed: bool | None = None
        error: str | None = None
        if not holders and claimed.target is not None:
            try:
                removed = self._membership.remove(claimed.target, self._settings.elevation_retry_seconds)
            except (WinRMError, TargetError) as exc:
                error = str(exc)
        details = {"removed": removed, "kept_for": holders, "error": error}
        with transaction(self._factory) as session:
            audit.record(session, at=self._clock.now(), actor=ACTOR, request_id=claimed.request_id,
                         action="elevation.compensation_failed" if error else "elevation.compensated",
                         event_id=event_id, details=details,
                         reason="membership from an add that lost the race to a check-in or expiry")
        if error is not None:
            log.error("elevation.compensation.failed", error=error)
        else:
            log.info("elevation.compensated", removed=removed, kept_for=holders)

