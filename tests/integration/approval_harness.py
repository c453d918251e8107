"""Helpers for jit-approval tests: the daemon in-process with the real Consumer, events in and out.

`EventTap` is an exclusive queue of the test's own bound to the test's exchange with `#`: every
event anyone publishes is seen there, which is how tests observe what the daemon published.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from services.approval.main import NAME, ROUTING_KEYS, processor
from services.approval.sweeper import cancel_expired_pending
from shared.daemon import Periodic, Runtime
from shared.events import format_time, new_event
from shared.settings import Settings
from tests.support import EventTap, poll, running

__all__ = ["EventTap", "approval_running", "decided", "poll", "requested"]


@contextmanager
def approval_running(settings: Settings) -> Iterator[Runtime]:
    """jit-approval in this process, built as its main builds it, with the real Consumer on a thread."""
    runtime = Runtime.create(NAME, settings)
    sweeper = Periodic("sweeper", settings.sweep_interval_seconds,
                       lambda: cancel_expired_pending(runtime.factory, runtime.clock))
    with runtime.started(ROUTING_KEYS, processor(runtime.factory, runtime.clock), [sweeper]) as consumer, \
            running(consumer, join_timeout=20):
        yield runtime


def requested(request_id: str | None = None, *, secret_id: str = "sec-0-0", host: str = "127.0.0.1",  # noqa: S107
              requester_id: str = "alice", checkout_id: str | None = None, expires_in: float = 3600,
              event_id: str | None = None) -> Any:
    return new_event("elevation.requested", {
        "request_id": request_id or f"req-{uuid.uuid4().hex[:10]}",
        "checkout_id": checkout_id or f"co-{uuid.uuid4().hex[:10]}", "secret_id": secret_id,
        "requester_id": requester_id, "host": host, "justification": "patching",
        "checkout_expires_at": format_time(datetime.now(UTC) + timedelta(seconds=expires_in)),
    }, source="test/workflow", event_id=event_id)


def decided(request_id: str, approver_id: str, decision: str = "approve", reason: str | None = None,
            event_id: str | None = None) -> Any:
    data = {"request_id": request_id, "approver_id": approver_id, "decision": decision}
    if reason:
        data["reason"] = reason
    return new_event("elevation.decided", data, source="test/requests-tab", event_id=event_id)


