"""Parked decisions (a decision that arrives before its request) are bounded in time, bound to the request
and to the approver's authenticated identity, and audited when dropped (issue 11); both databases."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from services.approval.main import processor
from services.approval.parked import drop_expired
from shared.clock import FakeClock
from shared.db.engine import transaction
from shared.db.models import AuditEntry, Request, User
from tests.factories import HostSpec, seed_config
from tests.integration.approval_harness import decided, requested


def world(factory: sessionmaker[Session]) -> FakeClock:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    with transaction(factory) as s:
        s.execute(update(User).where(User.id == "bob").values(broker_user="bob-cli"))
    return FakeClock(datetime.now(UTC))


def actions(factory: sessionmaker[Session], request_id: str) -> list[tuple[str, str | None]]:
    with factory() as s:
        return [(a, r) for a, r in s.execute(select(AuditEntry.action, AuditEntry.reason)
                                             .where(AuditEntry.request_id == request_id).order_by(AuditEntry.id))]


def state(factory: sessionmaker[Session], request_id: str) -> str | None:
    with factory() as s:
        row = s.get(Request, request_id)
        return row.state if row else None


def test_a_decision_parked_within_its_time_is_applied(factory: sessionmaker[Session]) -> None:
    clock = world(factory)
    process = processor(factory, clock, parked_seconds=300)
    request = requested(expires_in=86400)
    rid = request.data.request_id
    process(decided(rid, "bob").model_copy(update={"publisher": "bob-cli"}))
    clock.advance(299)
    process(request)
    assert state(factory, rid) == "APPROVED"
    parked = [r for a, r in actions(factory, rid) if a == "decision.parked"]
    assert parked and not [a for a, _ in actions(factory, rid) if a == "decision.dropped"]


def test_a_decision_parked_too_long_is_dropped_and_audited(factory: sessionmaker[Session]) -> None:
    clock = world(factory)
    process = processor(factory, clock, parked_seconds=300)
    request = requested(expires_in=86400)
    rid = request.data.request_id
    process(decided(rid, "bob").model_copy(update={"publisher": "jit-requests-tab"}))
    clock.advance(301)
    process(request)
    assert state(factory, rid) == "PENDING"
    dropped = [r for a, r in actions(factory, rid) if a == "decision.dropped"]
    assert len(dropped) == 1 and "did not arrive within 300 s" in (dropped[0] or "")


def test_the_periodic_job_drops_expired_parked_decisions_once(factory: sessionmaker[Session]) -> None:
    clock = world(factory)
    process = processor(factory, clock, parked_seconds=60)
    rid = "req-never-comes"
    process(decided(rid, "bob").model_copy(update={"publisher": "bob-cli"}))
    assert drop_expired(factory, clock, 60) == 0
    clock.advance(61)
    assert drop_expired(factory, clock, 60) == 1
    assert drop_expired(factory, clock, 60) == 0
    process(requested(rid, expires_in=86400))  # comes at last: the dropped decision is not applied
    assert state(factory, rid) == "PENDING"
    assert [a for a, _ in actions(factory, rid)].count("decision.dropped") == 1


def test_a_parked_decision_is_bound_to_the_approvers_broker_user(factory: sessionmaker[Session]) -> None:
    clock = world(factory)
    process = processor(factory, clock, parked_seconds=300)
    request = requested(expires_in=86400)
    rid = request.data.request_id
    process(decided(rid, "bob").model_copy(update={"publisher": "bob-cli"}))
    with transaction(factory) as s:  # bob's credentials were replaced (e.g. revoked) while it waited
        s.execute(update(User).where(User.id == "bob").values(broker_user="bob-new"))
    process(request)
    assert state(factory, rid) == "PENDING"
    dropped = [r for a, r in actions(factory, rid) if a == "decision.dropped"]
    assert len(dropped) == 1 and "whose broker user is now 'bob-new'" in (dropped[0] or "")
