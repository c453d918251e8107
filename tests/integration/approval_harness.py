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

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from services.approval.main import NAME, ROUTING_KEYS, processor
from services.approval.sweeper import cancel_expired_pending
from shared.daemon import Periodic, Runtime
from shared.db.engine import transaction
from shared.db.models import AuditEntry, Request, Task, User, UserPermission
from shared.events import Event, format_time, new_event
from shared.rules import APPROVER_PERMISSIONS, REQUESTER_PERMISSIONS
from shared.settings import Settings
from tests.factories import HostSpec, seed_config
from tests.support import EventTap, poll, running

__all__ = ["EventTap", "World", "add_user", "approval_running", "catching", "configure", "decided", "poll",
           "requested", "seed", "world_running"]


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


def add_user(factory: sessionmaker[Session], user_id: str, permissions: tuple[str, ...]) -> None:
    with transaction(factory) as s:
        s.add(User(id=user_id, kind="internal"))
        s.add_all(UserPermission(user_id=user_id, permission=p) for p in sorted(set(permissions)))


def configure(factory: sessionmaker[Session], **task: Any) -> None:
    with transaction(factory) as s:
        s.execute(update(Task).where(Task.id == "task").values(**task))


def seed(factory: sessionmaker[Session], secrets: int = 1) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)], secrets_per_host=secrets)
    add_user(factory, "rita", REQUESTER_PERMISSIONS + APPROVER_PERMISSIONS)  # may request and approve
    for approver in ("dan", "erin"):
        add_user(factory, approver, APPROVER_PERMISSIONS)


class World:
    def __init__(self, factory: sessionmaker[Session], tap: EventTap, publish: Any) -> None:
        self.factory, self.tap, self._publish = factory, tap, publish

    def send(self, event: Event) -> str:
        self._publish(event.type, event.to_json(), message_id=event.id)
        return getattr(event.data, "request_id", "")

    def row(self, request_id: str) -> Request:
        with self.factory() as s:
            row = s.get(Request, request_id)
            assert row is not None
            return row

    def state_of(self, request_id: str, state: str) -> Request:
        def reached() -> bool:
            with self.factory() as s:
                row = s.get(Request, request_id)
                return row is not None and row.state == state
        poll(reached, 10, f"{request_id} {state}")
        return self.row(request_id)

    def audited(self, request_id: str, action: str, count: int = 1) -> list[AuditEntry]:
        def found() -> list[AuditEntry] | None:
            with self.factory() as s:
                rows = list(s.scalars(select(AuditEntry).where(AuditEntry.request_id == request_id,
                                                               AuditEntry.action == action).order_by(AuditEntry.id)))
            return rows if len(rows) >= count else None
        return poll(found, 10, f"{count} x {action} for {request_id}")  # type: ignore[no-any-return]


@contextmanager
def world_running(settings: Settings, factory: sessionmaker[Session]) -> Iterator[World]:
    """The seeded configuration (requester alice, approvers bob, dan, erin, rita) and jit-approval running."""
    seed(factory)
    tap = EventTap(settings)
    try:
        with approval_running(settings) as runtime:
            yield World(factory, tap, runtime.publisher.publish)
    finally:
        tap.close()


def catching(fn: Any, errors: list[BaseException]) -> Any:
    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
    return run
