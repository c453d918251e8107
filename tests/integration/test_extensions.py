"""Extending an active elevation: jit-approval over the real broker on both databases, and the race with the
reaper's sweeper ending the same elevation (real handlers, concurrently, on the real databases).

The task says whether an extension is refused, automatic, or needs approval again (N distinct approvers,
as the request did), and the most time an elevation may have in total; the checkout's end bounds it.
A granted extension moves `expires_at` and publishes `elevation.extended`; the sweeper follows it.
Once the reaper has begun ending the elevation (REVOKING), an extension is refused and audited.
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
from services.reaper.sweeper import end_expired
from shared.clock import FakeClock
from shared.db.engine import transaction
from shared.db.models import AuditEntry, Extension, Request
from shared.events import Event, new_event
from shared.settings import Settings
from tests.integration.approval_harness import World, catching, configure, decided, requested, seed, world_running

pytestmark = [pytest.mark.rabbitmq]


def extend(request_id: str, seconds: int, requester_id: str = "alice", extension_id: str | None = None) -> Event:
    return new_event("elevation.extend_requested", {
        "request_id": request_id, "extension_id": extension_id or f"ext-{uuid.uuid4().hex[:8]}",
        "requester_id": requester_id, "justification": "the patch needs a second reboot",
        "duration_seconds": seconds}, source="test/workflow")


def decided_on(request_id: str, extension_id: str, approver_id: str, decision: str = "approve") -> Event:
    data = {"request_id": request_id, "approver_id": approver_id, "decision": decision, "extension_id": extension_id}
    if decision == "deny":
        data["reason"] = "enough for today"
    return new_event("elevation.decided", data, source="test/requests-tab")


@pytest.fixture
def world(settings: Settings, factory: sessionmaker[Session]) -> Iterator[World]:
    with world_running(settings, factory) as running_world:
        yield running_world


def approved(world: World, expires_in: float = 7200) -> Request:
    rid = world.send(requested(expires_in=expires_in))
    world.state_of(rid, "PENDING")
    world.send(decided(rid, "bob"))
    return world.state_of(rid, "APPROVED")


def extension(world: World, extension_id: str) -> Extension:
    with world.factory() as s:
        ext = s.get(Extension, extension_id)
        assert ext is not None
        return ext


def test_an_automatic_extension_moves_the_window_and_is_published(world: World) -> None:
    configure(world.factory, extension="automatic")
    row = approved(world)
    assert row.expires_at is not None
    ask = extend(row.id, 600)
    world.send(ask)
    data = world.tap.wait_for("elevation.extended", row.id)[0]["data"]
    new = row.expires_at + timedelta(seconds=600)
    assert (datetime.fromisoformat(data["expires_at"]), datetime.fromisoformat(data["previous_expires_at"])) == (
        new, row.expires_at)
    assert (data["extension_id"], data["approver_id"], data["policy"]) == (ask.data.extension_id, "policy",
                                                                         "extension_automatic")
    assert world.row(row.id).expires_at == new and world.row(row.id).state == "APPROVED"
    assert extension(world, ask.data.extension_id).state == "EXTENDED"
    audit = world.audited(row.id, "extend")[0]
    assert (audit.from_state, audit.to_state, audit.details["extension_id"]) == (  # type: ignore[index]
        "APPROVED", "APPROVED", ask.data.extension_id)
    world.audited(row.id, "extension.requested")


def test_the_task_bounds_the_total_and_the_checkout_bounds_everything(world: World) -> None:
    configure(world.factory, extension="automatic", extension_max_total_seconds=3900)
    row = approved(world)
    assert row.decided_at is not None
    world.send(extend(row.id, 3600))
    data = world.tap.wait_for("elevation.extended", row.id)[0]["data"]
    assert datetime.fromisoformat(data["expires_at"]) == row.decided_at + timedelta(seconds=3900)
    world.send(extend(row.id, 60))  # already at the task's most total time
    denied = world.tap.wait_for("elevation.extension_denied", row.id)[0]["data"]
    assert "most total time" in denied["reason"] and denied["approver_id"] == "policy"
    short = approved(world, expires_in=1800)  # checkout ends before the task's window
    world.send(extend(short.id, 600))
    assert "checkout's end" in world.tap.wait_for("elevation.extension_denied", short.id)[0]["data"]["reason"]


def test_an_extension_that_needs_approval_waits_for_n_distinct_approvers(world: World) -> None:
    configure(world.factory, extension="approval", approvals_required=2)
    rid = world.send(requested(expires_in=7200))
    world.state_of(rid, "PENDING")
    world.send(decided(rid, "bob"))
    world.send(decided(rid, "carol"))
    row = world.state_of(rid, "APPROVED")
    ask = extend(rid, 900)
    world.send(ask)
    world.audited(rid, "extension.requested")
    xid = ask.data.extension_id
    world.send(decided_on(rid, xid, "alice"))  # the requester may not approve
    # Decisions are handled by several workers at once: wait for this one before the next, or it may be
    # handled after the extension is decided (then it is ignored as late, not refused as self-approval).
    refused = [a for a in world.audited(rid, "decision.refused") if "self-approval" in (a.reason or "")]
    assert refused and refused[0].details["extension_id"] == xid  # type: ignore[index]
    world.send(decided_on(rid, xid, "bob"))
    world.send(decided_on(rid, xid, "bob"))  # counts once
    world.audited(rid, "decision.ignored")
    assert extension(world, xid).state == "PENDING" and world.row(rid).expires_at == row.expires_at
    world.send(decided_on(rid, xid, "dan"))
    data = world.tap.wait_for("elevation.extended", rid)[0]["data"]
    assert data["approver_id"] == "dan" and data.get("policy") is None
    assert row.expires_at is not None and world.row(rid).expires_at == row.expires_at + timedelta(seconds=900)


def test_an_approver_may_deny_an_extension(world: World) -> None:
    configure(world.factory, extension="approval")
    row = approved(world)
    ask = extend(row.id, 900)
    world.send(ask)
    world.audited(row.id, "extension.requested")
    world.send(decided_on(row.id, ask.data.extension_id, "carol", "deny"))
    denied = world.tap.wait_for("elevation.extension_denied", row.id)[0]["data"]
    assert (denied["approver_id"], denied["reason"]) == ("carol", "enough for today")
    assert world.row(row.id).expires_at == row.expires_at and world.row(row.id).state == "APPROVED"


@pytest.mark.parametrize(("setup", "reason"), [
    ({}, "does not allow extensions"),
    ({"extension": "automatic", "requester": "bob"}, "only the requester (alice)"),
    ({"extension": "automatic", "state": "REVOKING"}, "REVOKING; only an active elevation can be extended"),
])
def test_extensions_are_refused_and_audited(world: World, setup: dict[str, Any], reason: str) -> None:
    if "extension" in setup:
        configure(world.factory, extension=setup["extension"])
    row = approved(world)
    if "state" in setup:
        with transaction(world.factory) as s:
            s.execute(update(Request).where(Request.id == row.id).values(state=setup["state"]))
    world.send(extend(row.id, 600, requester_id=setup.get("requester", "alice")))
    assert reason in world.tap.wait_for("elevation.extension_denied", row.id)[0]["data"]["reason"]
    assert reason in (world.audited(row.id, "extension.denied")[0].reason or "")
    assert world.row(row.id).expires_at == row.expires_at and not world.tap.of("elevation.extended", row.id)


def elevated_due_at(factory: sessionmaker[Session], due: datetime) -> str:
    """An ELEVATED request of the automatic-extension task whose window ends at `due`."""
    process = processor(factory, FakeClock(due - timedelta(minutes=30)))
    event = requested(expires_in=7200)
    process(event)
    process(decided(event.data.request_id, "bob"))
    with transaction(factory) as s:
        s.execute(update(Request).where(Request.id == event.data.request_id).values(state="ELEVATED", expires_at=due))
    return str(event.data.request_id)


def test_the_reaper_follows_an_extended_window(factory: sessionmaker[Session]) -> None:
    seed(factory)
    configure(factory, extension="automatic")
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    rid = elevated_due_at(factory, due)
    processor(factory, FakeClock(due - timedelta(seconds=10)))(extend(rid, 600))
    late = due + timedelta(seconds=1)
    assert end_expired(factory, late, late + timedelta(seconds=30), room=0) == []
    with factory() as s:
        assert s.get(Request, rid).state == "ELEVATED"  # type: ignore[union-attr]
    after = due + timedelta(seconds=601)
    end_expired(factory, after, after + timedelta(seconds=30), room=0)
    with factory() as s:
        row = s.get(Request, rid)
        assert row is not None and (row.state, row.end_trigger) == ("REVOKING", "approval_expired")


@pytest.mark.parametrize("round_", range(10))
def test_an_extension_racing_the_sweeper_either_extends_or_is_refused(factory: sessionmaker[Session],
                                                                      round_: int) -> None:
    """The window ends at `due`: the sweeper (its clock past `due`) and an extension (its clock just before)
    act at once. Exactly one wins: extended and still ELEVATED, or REVOKING and the extension refused, audited."""
    seed(factory)
    configure(factory, extension="automatic")
    due = datetime.now(UTC) + timedelta(minutes=5)
    rid = elevated_due_at(factory, due)
    ask = extend(rid, 600)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def extension() -> None:
        barrier.wait()
        processor(factory, FakeClock(due - timedelta(milliseconds=50)))(ask)

    def sweep() -> None:
        barrier.wait()
        now = due + timedelta(milliseconds=50)
        end_expired(factory, now, now + timedelta(seconds=30), room=0)

    threads = [threading.Thread(target=catching(f, errors)) for f in ((extension, sweep) if round_ % 2
                                                                          else (sweep, extension))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    with factory() as s:
        row = s.get(Request, rid)
        ext = s.get(Extension, ask.data.extension_id)
        assert row is not None and ext is not None
        if ext.state == "EXTENDED":
            assert row.state == "ELEVATED" and row.expires_at == due + timedelta(seconds=600)
        else:
            assert (ext.state, row.state, row.expires_at) == ("DENIED", "REVOKING", due)
            assert s.scalars(select(AuditEntry).where(AuditEntry.request_id == rid,
                                                      AuditEntry.action == "extension.denied")).first() is not None
