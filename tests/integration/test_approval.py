"""jit-approval in-process with the real Consumer, against the real broker and both databases.

Outcomes are observed in the database and in the events the daemon publishes (an `EventTap`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import transaction
from shared.db.models import AuditEntry, CheckIn, Host, Request, Secret, Task, TaskSecret, User, UserPermission
from shared.events import Event, new_event
from shared.rules import APPROVER_PERMISSIONS, REQUESTER_PERMISSIONS
from shared.settings import Settings
from tests.factories import ADMINISTRATORS, HostSpec, seed_config
from tests.integration.approval_harness import EventTap, approval_running, decided, poll, requested

pytestmark = [pytest.mark.rabbitmq]


class World:
    def __init__(self, settings: Settings, factory: sessionmaker[Session], tap: EventTap, publish: Any) -> None:
        self.settings, self.factory, self.tap, self._publish = settings, factory, tap, publish

    def send(self, event: Event) -> str:
        self._publish(event.type, event.to_json(), message_id=event.id)
        return getattr(event.data, "request_id", "")

    def request(self, request_id: str) -> Request | None:
        with self.factory() as s:
            return s.get(Request, request_id)

    def state_of(self, request_id: str, state: str, timeout: float = 10.0) -> Request:
        def reached() -> Request | None:
            row = self.request(request_id)
            return row if row is not None and row.state == state else None
        return poll(reached, timeout, f"{request_id} in {state}")  # type: ignore[no-any-return]

    def audit(self, request_id: str, action: str | None = None) -> list[AuditEntry]:
        with self.factory() as s:
            stmt = select(AuditEntry).where(AuditEntry.request_id == request_id).order_by(AuditEntry.id)
            return [a for a in s.scalars(stmt) if action is None or a.action == action]

    def audited(self, request_id: str, action: str, count: int = 1) -> list[AuditEntry]:
        return poll(lambda: (rows if len(rows := self.audit(request_id, action)) >= count else None),  # type: ignore[no-any-return]
                    10.0, f"{count} audit {action} for {request_id}")


def add_user(factory: sessionmaker[Session], user_id: str, kind: str, permissions: list[str]) -> None:
    with transaction(factory) as s:
        s.add(User(id=user_id, kind=kind))
        s.add_all(UserPermission(user_id=user_id, permission=p) for p in permissions)


@pytest.fixture
def world(settings: Settings, factory: sessionmaker[Session]) -> Iterator[World]:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    add_user(factory, "rita", "internal", sorted(set(REQUESTER_PERMISSIONS) | set(APPROVER_PERMISSIONS)))
    add_user(factory, "dave", "internal", ["LOGIN_TO_WEB_UI", "CONNECT"])
    tap = EventTap(settings)
    try:
        with approval_running(settings) as runtime:
            yield World(settings, factory, tap, runtime.publisher.publish)
    finally:
        tap.close()


def test_request_then_approval_by_an_approver(world: World) -> None:
    rid = world.send(requested(expires_in=7200))
    row = world.state_of(rid, "PENDING")
    assert (row.task_id, row.account, row.group) == ("task", "acct-0-0", ADMINISTRATORS)
    world.send(decided(rid, "bob"))
    row = world.state_of(rid, "APPROVED")
    approved = world.tap.wait_for("elevation.approved", rid)[0]["data"]
    assert approved["approver_id"] == "bob" and row.approver_id == "bob" and row.decided_at is not None
    # The task's window (3600 s) ends before the checkout (7200 s).
    assert row.expires_at == row.decided_at + timedelta(seconds=3600)
    assert row.expires_at <= row.checkout_expires_at
    assert datetime.fromisoformat(approved["expires_at"]) == row.expires_at


def test_checkout_ending_first_bounds_the_approval(world: World) -> None:
    rid = world.send(requested(expires_in=600))
    world.state_of(rid, "PENDING")
    world.send(decided(rid, "bob"))
    row = world.state_of(rid, "APPROVED")
    assert row.expires_at == row.checkout_expires_at


def test_denial_by_an_approver_carries_the_reason(world: World) -> None:
    rid = world.send(requested())
    world.state_of(rid, "PENDING")
    world.send(decided(rid, "carol", "deny", "not during the freeze"))
    row = world.state_of(rid, "DENIED")
    assert row.reason == "not during the freeze" and row.approver_id == "carol"
    denied = world.tap.wait_for("elevation.denied", rid)[0]["data"]
    assert denied == {"request_id": rid, "reason": "not during the freeze", "approver_id": "carol"}


def test_rules_deny_with_policy_as_approver(world: World) -> None:
    with transaction(world.factory) as s:
        s.add(Secret(id="sec-loose", account="x", domain=None, application_id="app", credential_provider_id="prov",
                     checkout_enabled=True))
        s.add(Secret(id="sec-nocheckout", account="y", domain="CORP", application_id="app",
                     credential_provider_id="prov", checkout_enabled=False))
        s.flush()
        s.add(TaskSecret(task_id="task", secret_id="sec-nocheckout"))
        # Reordered: the check-in was recorded (by the reaper) before the request arrived.
        s.add(CheckIn(checkout_id="co-checked-in", secret_id="sec-0-0", reason="manual",
                      checked_in_at=datetime.now(UTC), event_id="ev-ci"))
    cases = {
        world.send(requested(secret_id="sec-none")): "secret sec-none is not configured",
        world.send(requested(secret_id="sec-loose")): "secret sec-loose is in no task",
        world.send(requested(requester_id="zed")): "user zed is unknown",
        world.send(requested(requester_id="victor")): "vendor representative",
        world.send(requested(requester_id="dave")): "lacks the requester permission(s) VIEW_APPLICATION",
        world.send(requested(host="10.9.9.9")): "host 10.9.9.9 is not a host of the application",
        world.send(requested(secret_id="sec-nocheckout")): "checkout is not enabled for secret sec-nocheckout",
        world.send(requested(expires_in=-5)): "checkout window has already ended",
        world.send(requested(checkout_id="co-checked-in")): "already been checked in",
    }
    for rid, reason in cases.items():
        row = world.state_of(rid, "DENIED")
        assert row.approver_id == "policy" and reason in (row.reason or ""), (rid, row.reason)
        event = world.tap.wait_for("elevation.denied", rid)[0]["data"]
        assert event["approver_id"] == "policy" and reason in event["reason"]
        assert world.audit(rid, "requested")[0].to_state == "DENIED"
    assert not world.tap.of("elevation.approved")


def test_second_request_for_an_active_checkout_is_denied(world: World) -> None:
    first = world.send(requested(checkout_id="co-1"))
    world.state_of(first, "PENDING")
    second = world.send(requested(checkout_id="co-1"))
    assert "already has an active request" in (world.state_of(second, "DENIED").reason or "")
    assert world.request(first).state == "PENDING"  # type: ignore[union-attr]


def test_not_required_task_is_approved_by_policy(world: World) -> None:
    with transaction(world.factory) as s:
        task = s.get(Task, "task")
        assert task is not None
        task.approval_required = False
    rid = world.send(requested())
    row = world.state_of(rid, "APPROVED")
    assert row.approver_id == "policy"
    data = world.tap.wait_for("elevation.approved", rid)[0]["data"]
    assert data["approver_id"] == "policy" and data["policy"] == "approval_not_required"


def test_the_same_event_twice_has_one_effect(world: World) -> None:
    event = requested()
    rid = world.send(event)
    world.send(event)
    world.send(requested(rid, event_id="another-id"))  # same request id, new event id: still a duplicate
    world.state_of(rid, "PENDING")
    vote = decided(rid, "bob")
    world.send(vote)
    world.send(vote)
    world.state_of(rid, "APPROVED")
    world.tap.wait_for("elevation.approved", rid)
    poll(lambda: len([e for e in world.tap.drain() if e["id"] in (event.id, vote.id)]) == 4, what="echoes")
    assert len(world.audit(rid, "requested")) == 1 and len(world.audit(rid, "approve")) == 1
    assert len(world.tap.of("elevation.approved", rid)) == 1


def test_a_decision_before_its_request_is_parked_and_applied(world: World) -> None:
    rid = "req-early-decision"
    world.send(decided(rid, "bob"))
    world.audited(rid, "decision.parked")
    assert world.request(rid) is None
    world.send(requested(rid))
    row = world.state_of(rid, "APPROVED")
    assert row.approver_id == "bob"
    world.tap.wait_for("elevation.approved", rid)


def test_refused_decisions_leave_the_request_pending(world: World) -> None:
    rid = world.send(requested(requester_id="rita"))
    world.state_of(rid, "PENDING")
    world.send(decided(rid, "rita"))  # self-approval
    world.send(decided(rid, "alice"))  # a requester, not an approver
    world.send(decided(rid, "victor"))  # a vendor rep
    world.send(decided(rid, "nobody"))  # unknown
    refused = world.audited(rid, "decision.refused", 4)
    reasons = " | ".join(a.reason or "" for a in refused)
    assert "self-approval is not allowed" in reasons and "lacks the approver permission(s)" in reasons
    assert "not an internal user" in reasons and "approver nobody is unknown" in reasons
    assert world.request(rid).state == "PENDING"  # type: ignore[union-attr]
    world.send(decided(rid, "bob"))
    world.state_of(rid, "APPROVED")


def test_first_decision_wins_and_later_ones_are_ignored(world: World) -> None:
    rid = world.send(requested())
    world.state_of(rid, "PENDING")
    world.send(decided(rid, "bob"))
    world.state_of(rid, "APPROVED")
    world.send(decided(rid, "carol", "deny", "too late"))
    ignored = world.audited(rid, "decision.ignored")
    assert ignored[0].actor == "carol"
    assert world.request(rid).state == "APPROVED" and not world.tap.of("elevation.denied", rid)  # type: ignore[union-attr]


def test_decisions_on_ended_requests_are_refused(world: World) -> None:
    denied = world.send(requested(requester_id="victor"))
    world.state_of(denied, "DENIED")
    world.send(decided(denied, "bob"))
    assert "request is DENIED" in (world.audited(denied, "decision.refused")[0].reason or "")
    assert world.request(denied).state == "DENIED"  # type: ignore[union-attr]


def test_a_decision_after_check_in_cancels_instead(world: World) -> None:
    rid = world.send(requested(checkout_id="co-later-checked-in"))
    world.state_of(rid, "PENDING")
    with transaction(world.factory) as s:
        s.add(CheckIn(checkout_id="co-later-checked-in", secret_id="sec-0-0", reason="manual",
                      checked_in_at=datetime.now(UTC), event_id="ev-ci2"))
    world.send(decided(rid, "bob"))
    row = world.state_of(rid, "CANCELLED")
    assert row.end_trigger == "checked_in" and not world.tap.of("elevation.approved", rid)
    world.tap.wait_for("elevation.cancelled", rid)


def test_undecided_requests_are_cancelled_when_the_checkout_ends(world: World) -> None:
    rid = world.send(requested(expires_in=1.0))
    world.state_of(rid, "PENDING")
    row = world.state_of(rid, "CANCELLED", timeout=10)
    assert row.end_trigger == "checkout_expired"
    assert world.tap.wait_for("elevation.cancelled", rid)[0]["data"]["request_id"] == rid
    assert world.audit(rid, "end")[0].to_state == "CANCELLED"


def test_a_requester_who_lost_a_permission_before_the_decision_is_not_approved(world: World) -> None:
    rid = world.send(requested())
    world.state_of(rid, "PENDING")
    with transaction(world.factory) as s:
        s.execute(delete(UserPermission).where(UserPermission.user_id == "alice",
                                               UserPermission.permission == "CONNECT"))
    world.send(decided(rid, "bob"))
    row = world.state_of(rid, "DENIED")
    assert row.approver_id == "policy" and "no longer eligible" in (row.reason or "")
    assert "CONNECT" in world.tap.wait_for("elevation.denied", rid)[0]["data"]["reason"]
    assert world.tap.of("elevation.approved", rid) == []


def test_the_host_is_recorded_and_matched_in_canonical_form(world: World) -> None:
    with transaction(world.factory) as s:
        s.add(Host(application_id="app", address="web01.corp.example", scheme="http", port=5985, transport="basic",
                   verify_tls=False))
    rid = world.send(requested(host="WEB01.Corp.Example."))
    assert world.state_of(rid, "PENDING").host == "web01.corp.example"
    # One canonical form, so the same host in another spelling is the same checkout's host, not a new one.
    second = world.send(requested(host="web01.CORP.example"))
    assert world.state_of(second, "PENDING").host == "web01.corp.example"


def with_duration(duration: int, *, expires_in: float = 7200) -> Event:
    data = requested(expires_in=expires_in).data.model_dump(mode="json") | {"duration_seconds": duration}
    return new_event("elevation.requested", data, source="test/workflow")


@pytest.mark.parametrize(("duration", "window"), [(600, 600), (7200, 3600)])
def test_a_requested_duration_bounds_the_window(world: World, duration: int, window: int) -> None:
    rid = world.send(with_duration(duration))
    assert world.state_of(rid, "PENDING").duration_seconds == duration
    world.send(decided(rid, "bob"))
    row = world.state_of(rid, "APPROVED")
    assert row.decided_at is not None and row.expires_at == row.decided_at + timedelta(seconds=window)
    assert datetime.fromisoformat(world.tap.wait_for("elevation.approved", rid)[0]["data"]["expires_at"]) == (
        row.expires_at)


def test_a_requested_duration_bounds_an_approval_by_policy(world: World) -> None:
    with transaction(world.factory) as s:
        task = s.get(Task, "task")
        assert task is not None
        task.approval_required = False
    rid = world.send(with_duration(120))
    row = world.state_of(rid, "APPROVED")
    assert row.approver_id == "policy" and row.decided_at is not None
    assert row.expires_at == row.decided_at + timedelta(seconds=120)
