"""jit-elevator in-process with the real Consumer, the real broker, both databases and jit-winrm-sim over HTTP.

Events go in through the broker (`elevation.approved`) and come out through the outbox relay; a
tap queue bound to `#` sees everything published. The simulator's fault modes drive the retry,
failure and race paths; in the races the real reaper (in-process, tests.integration.reaper_harness)
ends the request and removes by SID, and waits for the elevator's add to return before confirming.
The helpers here (`running_elevator`, `publish_approved`) are reused by the e2e tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.elevator.handler import ROUTING_KEYS, Elevator
from services.reaper.reconciler import Reconciler
from shared.amqp.publisher import Publisher
from shared.clock import SystemClock
from shared.daemon import Runtime
from shared.db.engine import transaction
from shared.db.models import AuditEntry, CheckIn, ReconcileTarget, Request
from shared.db.models import Membership as MembershipRow
from shared.db.transitions import load
from shared.events import format_time, new_event
from shared.settings import Settings
from shared.states import State
from shared.winrm import MembershipClient
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, HostSpec, make_request, seed_config
from tests.integration.reaper_harness import InProcessReaper, fast_settings
from tests.support import EventTap, poll, running
from winrm_sim import SimulatedHost

PASSWORD = "S1m-Pa55word!"
ENV = {PASSWORD_ENV: PASSWORD}
WARNING_FILTERS = ["ignore::DeprecationWarning:requests_ntlm.*", "ignore::DeprecationWarning:urllib3.*"]
pytestmark = [pytest.mark.filterwarnings(f) for f in WARNING_FILTERS]


def client(settings: Settings) -> MembershipClient:
    return MembershipClient(operation_timeout_sec=settings.winrm_operation_timeout_seconds,
                            read_timeout_sec=settings.winrm_read_timeout_seconds,
                            deadline_sec=settings.winrm_deadline_seconds,
                            max_shells_per_host=settings.per_host_concurrency)


@contextmanager
def running_elevator(settings: Settings) -> Iterator[Runtime]:
    """The daemon as `jit-elevator` builds it, with the real Consumer on a thread (no signal handlers)."""
    runtime = Runtime.create("elevator", settings)
    elevator = Elevator(runtime.factory, client(settings), settings, runtime.clock, environ=ENV)
    with runtime.started(ROUTING_KEYS, elevator.process) as consumer, running(consumer, join_timeout=20):
        yield runtime


def approved_event(request: Request) -> Any:
    return new_event("elevation.approved", {
        "request_id": request.id, "checkout_id": request.checkout_id, "secret_id": request.secret_id,
        "approver_id": "bob", "expires_at": format_time(request.expires_at or datetime.now(UTC)),
    }, source="test")


def publish_approved(publisher: Publisher, request: Request) -> str:
    event = approved_event(request)
    publisher.publish(event.type, event.to_json(), message_id=event.id)
    return str(event.id)


def state_of(factory: sessionmaker[Session], request_id: str) -> str:
    with factory() as s:
        found = s.get(Request, request_id)
        assert found is not None
        return found.state


def actions(factory: sessionmaker[Session], request_id: str) -> list[str]:
    with factory() as s:
        return list(s.scalars(select(AuditEntry.action).where(AuditEntry.request_id == request_id)
                              .order_by(AuditEntry.id)))


def scripts_run(sim: SimulatedHost, name: str) -> int:
    return sum(1 for c in list(sim.command_log) if c.script_name == name)


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(update={"elevation_retry_seconds": 6.0, "elevation_margin_seconds": 1.0})


@pytest.fixture
def sim() -> Iterator[SimulatedHost]:
    host = SimulatedHost("127.0.0.1", users={"svc-jit": PASSWORD}).start()
    yield host
    host.close()


@pytest.fixture
def world(fast: Settings, factory: sessionmaker[Session], sim: SimulatedHost) -> Iterator[tuple[EventTap, Publisher]]:
    seed_config(factory, [HostSpec(sim.address, sim.port)], secrets_per_host=2)
    tap = EventTap(fast)
    with running_elevator(fast), Publisher(fast) as publisher:
        yield tap, publisher
    tap.close()


MEMBER = "WIN-SIM01\\acct-0-0"


def test_approved_is_elevated_on_the_host(world: tuple[EventTap, Publisher], factory: sessionmaker[Session],
                                          sim: SimulatedHost) -> None:
    tap, publisher = world
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    publish_approved(publisher, req)
    [event] = tap.wait_for("elevation.elevated", req.id)
    assert event["data"]["account"] == "acct-0-0" and event["data"]["pre_existing"] is False
    assert state_of(factory, req.id) == State.ELEVATED
    assert sim.members(ADMINISTRATORS) == {MEMBER}
    assert scripts_run(sim, "add_member") == 1


def test_http_500s_then_success_are_retried(world: tuple[EventTap, Publisher], factory: sessionmaker[Session],
                                            sim: SimulatedHost) -> None:
    tap, publisher = world
    sim.inject("http500", "Create", count=3)
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    publish_approved(publisher, req)
    tap.wait_for("elevation.elevated", req.id)
    assert sim.members(ADMINISTRATORS) == {MEMBER} and sim.faults.rules() == []


def test_bad_credentials_fail_to_revoking(world: tuple[EventTap, Publisher], factory: sessionmaker[Session],
                                          sim: SimulatedHost) -> None:
    tap, publisher = world
    sim.reject_credentials()
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    publish_approved(publisher, req)
    [event] = tap.wait_for("elevation.failed", req.id)
    assert "resolve" in event["data"]["error"] and f"{sim.address}:{sim.port}" in event["data"]["error"]
    assert PASSWORD not in json.dumps(event)
    with factory() as s:
        row = load(s, req.id)
        assert row is not None and row.state == State.REVOKING and row.failed and row.next_attempt_at is not None
    assert sim.members(ADMINISTRATORS) == set()


def test_host_down_shorter_than_the_budget_succeeds(world: tuple[EventTap, Publisher], factory: sessionmaker[Session],
                                                    sim: SimulatedHost) -> None:
    tap, publisher = world
    sim.down_for(1.5)
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    publish_approved(publisher, req)
    tap.wait_for("elevation.elevated", req.id, timeout=20)
    assert sim.members(ADMINISTRATORS) == {MEMBER}


def test_expired_window_is_refused_with_no_winrm_call(world: tuple[EventTap, Publisher], factory: sessionmaker[Session],
                                                      sim: SimulatedHost) -> None:
    _tap, publisher = world
    req = make_request(factory, secret_id="sec-0-0", host=sim.address, expires_in=-5)
    publish_approved(publisher, req)
    poll(lambda: "elevation.refused" in actions(factory, req.id), 10, "refusal")
    assert sim.command_log == [] and state_of(factory, req.id) == State.APPROVED


def test_checked_in_checkout_is_refused(world: tuple[EventTap, Publisher], factory: sessionmaker[Session],
                                        sim: SimulatedHost) -> None:
    tap, publisher = world
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    with transaction(factory) as s:
        s.add(CheckIn(checkout_id=req.checkout_id, secret_id=req.secret_id, reason="service_closed",
                      checked_in_at=datetime.now(UTC), event_id="ev-ci"))
    publish_approved(publisher, req)
    poll(lambda: "elevation.refused" in actions(factory, req.id), 10, "refusal")
    assert sim.command_log == [] and tap.of("elevation.elevated") == []


def test_duplicate_approved_event_elevates_once(world: tuple[EventTap, Publisher], factory: sessionmaker[Session],
                                                sim: SimulatedHost) -> None:
    tap, publisher = world
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    event = approved_event(req)
    for _ in range(3):
        publisher.publish(event.type, event.to_json(), message_id=event.id)
    publish_approved(publisher, req)  # and a re-sent approval with a new event id
    tap.wait_for("elevation.elevated", req.id)
    poll(lambda: "elevation.refused" in actions(factory, req.id), 10, "refusal of the re-sent approval")
    time.sleep(0.5)  # let any wrongly accepted duplicate show itself before counting
    assert len(tap.of("elevation.elevated", req.id)) == 1
    assert actions(factory, req.id).count("start_elevation") == 1 and scripts_run(sim, "add_member") == 1


def test_pre_existing_membership_is_left_alone(world: tuple[EventTap, Publisher], factory: sessionmaker[Session],
                                               sim: SimulatedHost) -> None:
    tap, publisher = world
    sim.seed_member(ADMINISTRATORS, "acct-0-0")
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    publish_approved(publisher, req)
    [event] = tap.wait_for("elevation.elevated", req.id)
    assert event["data"]["pre_existing"] is True
    # The add is always sent; "already a member" is its success, and the member stays as it was.
    assert scripts_run(sim, "add_member") == 1 and "elevation.pre_existing" in actions(factory, req.id)
    assert sim.members(ADMINISTRATORS) == {MEMBER}


def test_two_holders_share_one_membership(world: tuple[EventTap, Publisher], factory: sessionmaker[Session],
                                          sim: SimulatedHost) -> None:
    tap, publisher = world
    first = make_request(factory, secret_id="sec-0-0", host=sim.address)
    publish_approved(publisher, first)
    tap.wait_for("elevation.elevated", first.id)
    second = make_request(factory, secret_id="sec-0-1", host=sim.address, account="acct-0-0")
    publish_approved(publisher, second)
    [event] = tap.wait_for("elevation.elevated", second.id)
    assert event["data"]["pre_existing"] is False  # the first grant's add explains the membership
    # The second grant knows the SIDs from the first: one run (elevate_known), no resolve.
    assert scripts_run(sim, "add_member") == 1 and scripts_run(sim, "elevate_known") == 1
    assert scripts_run(sim, "resolve") == 1 and sim.members(ADMINISTRATORS) == {MEMBER}


@pytest.fixture
def reaper(fast: Settings, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> InProcessReaper:
    """The real reaper, in-process (revocations run synchronously on the test's thread)."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    settings = fast_settings(fast.database_url)
    return InProcessReaper(factory, client(settings), settings)


def check_in(reaper: InProcessReaper, request: Request) -> None:
    reaper.deliver("secret.checked_in", checkout_id=request.checkout_id, secret_id=request.secret_id,
                   reason="service_closed")


def test_check_in_before_the_add_means_no_add(world: tuple[EventTap, Publisher], factory: sessionmaker[Session],
                                              sim: SimulatedHost, reaper: InProcessReaper) -> None:
    """The request ends while we resolve: the grant never takes hold, no add is ever sent, and the reaper
    ends it without a WinRM call."""
    tap, publisher = world
    sim.set_command_delay(1.0)  # every command answers 1 s late
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    publish_approved(publisher, req)
    poll(lambda: state_of(factory, req.id) == State.ELEVATING, 10, "ELEVATING")
    check_in(reaper, req)
    assert state_of(factory, req.id) == State.REVOKED  # nothing held: nothing to remove
    poll(lambda: "elevation.superseded" in actions(factory, req.id), 20, "the elevator giving up")
    assert scripts_run(sim, "add_member") == 0 and scripts_run(sim, "remove_member") == 0
    assert sim.members(ADMINISTRATORS) == set() and tap.of("elevation.elevated", req.id) == []


def test_check_in_during_a_slow_add_ends_with_the_account_out(
        world: tuple[EventTap, Publisher], factory: sessionmaker[Session], sim: SimulatedHost,
        reaper: InProcessReaper) -> None:
    """The add has run on the host but its answer is 1 s away when the reaper ends the request and removes:
    the reaper confirms nothing while the add may still land, and finishes once it has returned."""
    tap, publisher = world
    sim.set_command_delay(1.0)
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    publish_approved(publisher, req)
    poll(lambda: scripts_run(sim, "add_member") == 1, 10, "the add on the host")
    check_in(reaper, req)
    poll(lambda: "elevation.superseded" in actions(factory, req.id), 20, "the elevator's add returning")
    poll(lambda: reaper.sweep() or state_of(factory, req.id) == State.REVOKED, 20, "the reaper's confirmation")
    assert sim.members(ADMINISTRATORS) == set() and scripts_run(sim, "add_member") == 1
    assert "elevation.compensated" not in actions(factory, req.id)  # the elevator removes nothing itself
    assert tap.of("elevation.elevated", req.id) == []
    assert len(tap.wait_for("elevation.revoked", req.id)) == 1


ORPHAN = "S-1-5-21-3623811015-3361044348-30300820-1013"  # a domain account deleted since it was added


def test_a_group_holding_an_orphaned_sid_is_elevated_revoked_and_listed(
        world: tuple[EventTap, Publisher], factory: sessionmaker[Session], sim: SimulatedHost,
        reaper: InProcessReaper) -> None:
    """Get-LocalGroupMember fails on such a group (Windows PowerShell 5.1); the scripts fall back to ADSI, so
    the add is verified, the removal confirmed (not retried for ever) and the reconciler lists the group,
    the orphan a standing member it never touches."""
    tap, publisher = world
    sim.seed_member(ADMINISTRATORS, ORPHAN)
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    publish_approved(publisher, req)
    tap.wait_for("elevation.elevated", req.id)
    assert sim.member_sids(ADMINISTRATORS) == {ORPHAN, sim.host.sid_of("acct-0-0")}
    reconciler = Reconciler(factory, client(reaper.settings), reaper.settings, SystemClock())
    reconciler()  # first listing of the group: its standing members
    check_in(reaper, req)
    assert state_of(factory, req.id) == State.REVOKED
    assert sim.member_sids(ADMINISTRATORS) == {ORPHAN}
    with transaction(factory) as session:
        orphan = session.scalars(select(MembershipRow).where(MembershipRow.account_sid == ORPHAN)).one()
        target = session.scalars(select(ReconcileTarget)).one()
    assert orphan.baseline == "yes" and orphan.account == ORPHAN and target.last_error is None
