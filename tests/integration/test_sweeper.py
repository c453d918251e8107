"""The sweeper on both databases: each expired request ended once (in the database, claimed, with its
`elevation.expired` notification) however many sweep at once, lost elevators ended, due revocations
claimed by exactly one worker, stalls announced once per threshold crossing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.reaper.policy import ELEVATOR_LOST
from services.reaper.revocation import Revoker
from services.reaper.sweeper import end_expired, end_lost_elevations
from shared.clock import FakeClock
from shared.settings import Settings
from shared.states import State
from shared.winrm import Credentials, FakeWinRM, HostEndpoint, PermanentWinRMError
from tests.factories import HostSpec, elevate, make_grant, make_request, seed_config
from tests.integration.reaper_harness import (
    ADMINS,
    HOST,
    InProcessReaper,
    audit,
    fast_settings,
    held,
    outbox,
    password,
    request,
    set_values,
)

__all__ = ["password"]


@pytest.fixture
def seeded(factory: sessionmaker[Session], password: str) -> sessionmaker[Session]:
    seed_config(factory, [HostSpec(HOST, 5985)], secrets_per_host=3)
    return factory


def test_an_expired_request_is_ended_claimed_and_announced_once_with_the_bound_that_was_hit(
        seeded: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    lease = now + timedelta(seconds=30)
    by_approval = make_request(seeded, secret_id="sec-0-0", host=HOST, state=State.ELEVATED, expires_in=-5)
    by_checkout = make_request(seeded, secret_id="sec-0-1", host=HOST, state=State.APPROVED, expires_in=-1)
    not_due = make_request(seeded, secret_id="sec-0-2", host=HOST, state=State.ELEVATED, expires_in=60)
    assert sorted(end_expired(seeded, now, lease, room=10)) == sorted([by_approval.id, by_checkout.id])
    assert end_expired(seeded, now, lease, room=10) == []
    events = outbox(seeded, "elevation.expired")
    assert {e["request_id"]: e["reason"] for e in events} == {
        by_approval.id: "checkout_expired", by_checkout.id: "checkout_expired"}
    for rid in (by_approval.id, by_checkout.id):
        row = request(seeded, rid)
        # Ended here, in the database, and claimed for this replica's pool (no sweeper can take it in between).
        assert (row.state, row.end_trigger) == (State.REVOKING.value, "checkout_expired")
        assert row.lease_until == lease and row.next_attempt_at == lease and row.expiry_event_id is not None
        [ending] = [a for a in audit(seeded, rid) if a.to_state == "REVOKING"]
        assert (ending.actor, ending.event_id) == ("sweeper", row.expiry_event_id)
    assert request(seeded, not_due.id).expiry_event_id is None
    assert request(seeded, not_due.id).state == State.ELEVATED.value


def test_expiries_beyond_the_pools_room_are_ended_and_left_due(seeded: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    ids = {make_request(seeded, secret_id="sec-0-0", host=HOST, state=State.ELEVATED, expires_in=-1).id
           for _ in range(3)}
    claimed = end_expired(seeded, now, now + timedelta(seconds=30), room=1)
    assert len(claimed) == 1 and set(claimed) < ids
    for rid in ids - set(claimed):
        row = request(seeded, rid)
        # Ended all the same; unclaimed, due at once for whichever sweeper has room.
        assert row.state == State.REVOKING.value and row.lease_until is None and row.next_attempt_at == now
    assert len(outbox(seeded, "elevation.expired")) == 3


def test_an_approval_window_shorter_than_the_checkout_expires_as_approval_expired(
        seeded: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    row = make_request(seeded, secret_id="sec-0-0", host=HOST, state=State.ELEVATED, expires_in=600)
    set_values(seeded, row.id, expires_at=now - timedelta(seconds=1))
    end_expired(seeded, now, now + timedelta(seconds=30), room=10)
    assert outbox(seeded, "elevation.expired") == [{"request_id": row.id, "reason": "approval_expired"}]
    assert request(seeded, row.id).end_trigger == "approval_expired"


def test_concurrent_sweepers_end_each_expiry_exactly_once(seeded: sessionmaker[Session]) -> None:
    ids = {make_request(seeded, secret_id="sec-0-0", host=HOST, state=State.ELEVATED, expires_in=-1).id
           for _ in range(40)}
    now = datetime.now(UTC)
    start = threading.Barrier(4)
    claimed: list[str] = []
    lock = threading.Lock()

    def sweep() -> None:
        start.wait()
        for _ in range(5):
            got = end_expired(seeded, now, now + timedelta(seconds=30), room=100, limit=7)
            with lock:
                claimed.extend(got)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = [e["request_id"] for e in outbox(seeded, "elevation.expired")]
    assert sorted(published) == sorted(ids)
    assert sorted(claimed) == sorted(ids)  # each claimed by exactly one sweeper
    assert [a.to_state for rid in ids for a in audit(seeded, rid)].count("REVOKING") == len(ids)


class ElevatorKilled(BaseException):
    """The elevator's process dies (SIGKILL) in the middle of a call."""


class DiesAfterTheAddLands(FakeWinRM):
    def add_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        super().add_member(host, creds, group_sid, member_sid)
        raise ElevatorKilled


def test_an_elevation_whose_elevator_died_is_removed_and_ends_failed(seeded: sessionmaker[Session],
                                                                     database_url: str) -> None:
    clock = FakeClock(datetime.now(UTC))
    fake = DiesAfterTheAddLands()
    lost = make_request(seeded, secret_id="sec-0-0", host=HOST)
    with pytest.raises(ElevatorKilled):  # it took hold, sent the add (which landed), and died before recording
        elevate(seeded, fake, lost, clock=clock, settings=Settings(elevation_retry_seconds=0.5))
    assert fake.members(HOST, ADMINS) == {"acct-0-0"} and request(seeded, lost.id).state == State.ELEVATING.value
    alive = make_request(seeded, secret_id="sec-0-1", host=HOST, state=State.ELEVATING,
                         lease_until=clock.now() + timedelta(seconds=600))
    assert end_lost_elevations(seeded, clock.now()) == [], "taken back while its lease still runs"
    hold, _membership = held(seeded, lost.id)
    assert hold.add_until is not None
    clock.advance((hold.add_until - clock.now()).total_seconds() + 1)  # its lease (= add_until) has passed

    assert end_lost_elevations(seeded, clock.now()) == [lost.id]
    row = request(seeded, lost.id)
    assert (row.state, row.failed, row.error) == (State.REVOKING.value, True, ELEVATOR_LOST)
    assert outbox(seeded, "elevation.failed") == [{"request_id": lost.id, "error": ELEVATOR_LOST}]
    InProcessReaper(seeded, fake, fast_settings(database_url), clock).sweep()
    assert request(seeded, lost.id).state == State.FAILED.value
    assert fake.members(HOST, ADMINS) == set()
    assert request(seeded, alive.id).state == State.ELEVATING.value


def test_a_due_revocation_is_claimed_by_exactly_one_of_many_workers(seeded: sessionmaker[Session],
                                                                    database_url: str) -> None:
    ids = [make_request(seeded, secret_id="sec-0-0", host=HOST, state=State.REVOKING,
                        next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)).id for _ in range(30)]
    settings = fast_settings(database_url)
    revokers = [Revoker(seeded, FakeWinRM(), settings, FakeClock(datetime.now(UTC))) for _ in range(4)]
    claimed: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(revokers))

    def claim(revoker: Revoker) -> None:
        start.wait()
        for _ in range(10):
            got = revoker.claim_due(4) + [i for i in ids[:5] if revoker.claim(i)]
            with lock:
                claimed.extend(got)

    threads = [threading.Thread(target=claim, args=(r,)) for r in revokers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
    assert all(request(seeded, i).lease_until is not None for i in ids)


def test_a_stalled_revocation_is_announced_at_the_threshold_then_at_each_doubling(
        seeded: sessionmaker[Session], database_url: str) -> None:
    clock = FakeClock(datetime.now(UTC))
    fake = FakeWinRM()
    reaper = InProcessReaper(seeded, fake, fast_settings(database_url, stall_threshold_seconds=100), clock)
    rid = make_grant(seeded, fake, secret_id="sec-0-0", host=HOST).id
    fake.fail(PermanentWinRMError(HOST, "remove_member", "access denied"), times=None, operation="remove_member")
    reaper.deliver("elevation.revoke_requested", request_id=rid, operator_id="bob", reason="r")
    stalls = []
    for _ in range(50):  # 50 durable attempts, 10 s apart: 0 .. 490 s of failing
        clock.advance(10)
        reaper.sweep()
        stalls.append(len(outbox(seeded, "elevation.revocation_stalled")))
    row = request(seeded, rid)
    assert row.state == State.REVOKING.value and row.stalled_at is not None
    # Announced at 100 s, then 200 s and 400 s: three alerts in 490 s, retries all along.
    assert stalls[-1] == 3 and stalls.index(1) == 9 and stalls.index(2) == 19 and stalls.index(3) == 39
    assert row.attempts == 51
    [first, *_] = outbox(seeded, "elevation.revocation_stalled")
    assert first["request_id"] == rid and "access denied" in first["last_error"]
    assert [a.action for a in audit(seeded, rid)].count("revocation_stalled") == 3
