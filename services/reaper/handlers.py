"""The reaper's message handler: one transaction per event (inbox + effect), then the removal in the pool.

The transaction that makes a request REVOKING also claims it for this process (`lease`), and the
pool runs it right after the commit: a request is claimed once, so no sweeper can take it in between
and leave it waiting a whole lease with nobody working on it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from services.reaper import ending
from shared.clock import Clock
from shared.db.engine import transaction
from shared.events import Event

ROUTING_KEYS = ("secret.checked_in", "elevation.expired", "elevation.revoke_requested")
_HANDLERS = {
    "secret.checked_in": ending.on_checked_in,
    "elevation.revoke_requested": ending.on_revoke_requested,
}


def make_process(factory: sessionmaker[Session], clock: Clock, revoke: Callable[[str], object],
                 lease: Callable[[datetime], datetime], *, sweep_interval: float) -> Callable[[Event], None]:
    """`process(event)` for `Runtime.serve`: commit the ending (claimed), then start each revocation."""
    tolerance = timedelta(seconds=sweep_interval + 5)

    def process(event: Event) -> None:
        now = clock.now()
        with transaction(factory) as session:
            if event.type == "elevation.expired":
                revoking = ending.on_expired(session, event, now, lease(now), tolerance=tolerance)
            else:
                revoking = _HANDLERS[event.type](session, event, now, lease(now))
        for request_id in revoking:
            revoke(request_id)

    return process
