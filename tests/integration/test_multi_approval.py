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

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.approval.main import processor
from services.reaper.ending import on_checked_in
from shared.clock import FakeClock
from shared.db.engine import transaction
from shared.db.models import Request, Vote
from shared.events import Event, new_event
from shared.settings import Settings
from tests.integration.approval_harness import World, catching, configure, decided, requested, seed, world_running

pytestmark = [pytest.mark.rabbitmq]


@pytest.fixture
def world(settings: Settings, factory: sessionmaker[Session]) -> Iterator[World]:
    with world_running(settings, factory) as running_world:
        yield running_world



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

    threads = [threading.Thread(target=catching(f, errors)) for f in ((approve, check_in) if round_ % 2
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

