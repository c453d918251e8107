"""More than one approver, and requests nobody decides: jit-approval over the real broker, both databases.

A task may need N distinct approvals: the requester never counts, an approver counts once however
often they approve, a denial ends the request (`deny: any`) or denials from a majority of N do
(`deny: majority`). A request left undecided past `decision_timeout_seconds` is CANCELLED with reason
`decision_timeout`, and a decision that comes later cancels instead of approving. The races run the real
handlers concurrently on the real databases: the N-th approval against a check-in.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from services.approval.main import processor
from services.reaper.ending import on_checked_in
from shared.clock import FakeClock
from shared.db.engine import transaction
from shared.db.models import AuditEntry, Request, Task, User, UserPermission, Vote
from shared.events import Event, new_event
from shared.rules import APPROVER_PERMISSIONS, REQUESTER_PERMISSIONS
from shared.settings import Settings
from tests.factories import HostSpec, seed_config
from tests.integration.approval_harness import EventTap, approval_running, decided, poll, requested

pytestmark = [pytest.mark.rabbitmq]


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


@pytest.fixture
def world(settings: Settings, factory: sessionmaker[Session]) -> Iterator[World]:
    seed(factory)
    tap = EventTap(settings)
    try:
        with approval_running(settings) as runtime:
            yield World(factory, tap, runtime.publisher.publish)
    finally:
        tap.close()


def test_n_distinct_approvals_the_requester_never_counts_and_an_approver_counts_once(world: World) -> None:
    configure(world.factory, approvals_required=2)
    rid = world.send(requested(requester_id="rita"))
    world.state_of(rid, "PENDING")
    world.send(decided(rid, "rita"))  # the requester, although an approver
    assert "self-approval" in (world.audited(rid, "decision.refused")[0].reason or "")
    world.send(decided(rid, "bob"))
    counted = world.audited(rid, "decision.counted")[0]
    assert counted.details is not None and counted.details["approvals_needed"] == 1
    world.send(decided(rid, "bob"))  # again: still one approval
    assert "one approver counts once" in (world.audited(rid, "decision.ignored")[0].reason or "")
    assert world.row(rid).state == "PENDING"
    world.send(decided(rid, "carol"))
    row = world.state_of(rid, "APPROVED")
    approved = world.tap.wait_for("elevation.approved", rid)[0]["data"]
    assert (approved["approver_id"], approved["approvers"], row.approver_id) == ("carol", ["bob", "carol"], "carol")
    with world.factory() as s:
        assert sorted(s.scalars(select(Vote.approver_id).where(Vote.request_id == rid))) == ["bob", "carol"]


def test_any_denial_ends_the_request(world: World) -> None:
    configure(world.factory, approvals_required=3)
    rid = world.send(requested())
    world.state_of(rid, "PENDING")
    world.send(decided(rid, "bob"))
    world.audited(rid, "decision.counted")
    world.send(decided(rid, "carol", "deny", "not now"))
    row = world.state_of(rid, "DENIED")
    assert (row.approver_id, row.reason) == ("carol", "not now")
    assert world.tap.wait_for("elevation.denied", rid)[0]["data"]["reason"] == "not now"


def test_with_deny_majority_one_denial_waits_and_a_majority_denies(world: World) -> None:
    configure(world.factory, approvals_required=3, deny_policy="majority")
    rid = world.send(requested())
    world.state_of(rid, "PENDING")
    world.send(decided(rid, "bob", "deny", "risky"))
    world.audited(rid, "decision.counted")
    world.send(decided(rid, "carol"))
    world.audited(rid, "decision.counted", 2)
    assert world.row(rid).state == "PENDING"
    world.send(decided(rid, "dan", "deny", "agree, risky"))
    row = world.state_of(rid, "DENIED")
    assert "majority of approvers (bob, dan)" in (row.reason or "")


def test_an_undecided_request_is_cancelled_after_the_decision_timeout(world: World) -> None:
    configure(world.factory, decision_timeout_seconds=1)
    rid = world.send(requested())
    row = world.state_of(rid, "PENDING")
    assert row.decide_by is not None and row.decide_by == row.requested_at + timedelta(seconds=1)
    row = world.state_of(rid, "CANCELLED")
    assert row.end_trigger == "decision_timeout"
    assert world.tap.wait_for("elevation.cancelled", rid)[0]["data"]["reason"] == "decision_timeout"
    world.send(decided(rid, "bob"))  # days later, so to speak
    world.audited(rid, "decision.refused")
    assert world.row(rid).state == "CANCELLED" and not world.tap.of("elevation.approved", rid)


def test_a_decision_after_the_timeout_cancels_even_before_the_sweeper_runs(factory: sessionmaker[Session]) -> None:
    seed(factory)
    configure(factory, decision_timeout_seconds=60)
    clock = FakeClock(datetime.now(UTC))
    process = processor(factory, clock)
    event = requested()
    process(event)
    clock.advance(61)
    process(decided(event.data.request_id, "bob"))
    with factory() as s:
        row = s.get(Request, event.data.request_id)
        assert row is not None and (row.state, row.end_trigger) == ("CANCELLED", "decision_timeout")


def checked_in(checkout_id: str) -> Event:
    return new_event("secret.checked_in", {"checkout_id": checkout_id, "secret_id": "sec-0-0",
                                           "reason": "service_closed"}, source="test/workflow")


@pytest.mark.parametrize("round_", range(8))
def test_the_nth_approval_racing_a_check_in_never_leaves_an_approval_standing(
        factory: sessionmaker[Session], round_: int) -> None:
    """Both orders are fine (CANCELLED, or APPROVED then ended: REVOKING); an approval after a check-in is not."""
    seed(factory)
    configure(factory, approvals_required=2)
    process = processor(factory, FakeClock(datetime.now(UTC)))
    first = requested(checkout_id=f"co-race-{uuid.uuid4().hex[:6]}")
    rid, checkout = first.data.request_id, first.data.checkout_id
    process(first)
    process(decided(rid, "bob"))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def approve() -> None:
        barrier.wait()
        process(decided(rid, "carol"))

    def check_in() -> None:
        barrier.wait()
        with transaction(factory) as s:
            on_checked_in(s, checked_in(checkout), datetime.now(UTC))

    threads = [threading.Thread(target=_catching(f, errors)) for f in ((approve, check_in) if round_ % 2
                                                                          else (check_in, approve))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    with factory() as s:
        row = s.get(Request, rid)
        assert row is not None and row.state in ("CANCELLED", "REVOKING"), row.state
        if row.state == "REVOKING":  # approved first: the check-in ended it in the same breath
            assert row.end_trigger == "service_closed" and row.approver_id == "carol"


def _catching(fn: Any, errors: list[BaseException]) -> Any:
    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
    return run
