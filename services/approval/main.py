"""`jit-approval`: consumes `elevation.requested`, `elevation.decided` and `elevation.extend_requested`,
publishes approved/denied/cancelled and extended/extension_denied, and answers `status.query`.

Every event is handled in one transaction: inbox (one effect per event id), the state change, its
audit row and its outgoing events (outbox). A periodic job cancels requests left undecided when
their checkout window ends or their decision timeout passes. Status queries are not events: they
have their own small consumer (`status_server.py`), on its own queue, served by every replica.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial

from sqlalchemy.orm import Session, sessionmaker

from services.approval import parked
from services.approval.decisions import on_decided
from services.approval.extensions import on_extend_requested
from services.approval.requests import on_requested
from services.approval.status_server import StatusServer
from services.approval.sweeper import cancel_expired_pending
from shared.clock import Clock
from shared.daemon import Periodic, Runtime, daemon_main
from shared.db import inbox
from shared.db.engine import transaction
from shared.events import Event
from shared.logs import get_logger

NAME = "approval"
ROUTING_KEYS = ("elevation.requested", "elevation.decided", "elevation.extend_requested")
HANDLERS: dict[str, Callable[[Session, Event, datetime], None]] = {
    "elevation.requested": on_requested,
    "elevation.decided": on_decided,
    "elevation.extend_requested": on_extend_requested,
}
log = get_logger()


def processor(factory: sessionmaker[Session], clock: Clock,
              parked_seconds: float = parked.DEFAULT_SECONDS) -> Callable[[Event], None]:
    handlers = HANDLERS | {"elevation.requested": partial(on_requested, parked_seconds=parked_seconds)}

    def process(event: Event) -> None:
        now = clock.now()
        with transaction(factory) as session:
            if not inbox.first_time(session, NAME, event.id, now):
                log.info("event.duplicate")
                return
            handlers[event.type](session, event, now)

    return process


def build(runtime: Runtime) -> int:
    sweeper = Periodic("sweeper", runtime.settings.sweep_interval_seconds,
                       lambda: cancel_expired_pending(runtime.factory, runtime.clock))
    seconds = runtime.settings.parked_decision_seconds
    drops = Periodic("parked", min(seconds / 2, 30.0),
                     lambda: parked.drop_expired(runtime.factory, runtime.clock, seconds))
    with StatusServer(runtime.settings, runtime.factory, runtime.clock, runtime.stopping).running():
        return runtime.serve(ROUTING_KEYS, processor(runtime.factory, runtime.clock, seconds),
                             periodic=[sweeper, drops])


def main() -> None:
    daemon_main(NAME, "Approval of elevation requests: the rules, approvers' decisions, undecided requests.", build)


if __name__ == "__main__":
    main()
