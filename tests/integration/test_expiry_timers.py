"""Expiry timers on both databases: a window ending at T is ended at T (not at the next sweep), an
extension moves its timer, a check-in before T leaves nothing to do, two replicas that armed the same
timers end each request once, and the number of armed timers is capped."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.reaper.sweeper import Sweeper
from services.reaper.timers import ExpiryTimers
from shared.clock import Clock, FakeClock, SystemClock
from shared.states import State
from shared.winrm import FakeWinRM
from tests.factories import HostSpec, make_request, seed_config
from tests.integration.reaper_harness import (
    HOST,
    InProcessReaper,
    audit,
    fast_settings,
    outbox,
    password,
    request,
    set_values,
)
from tests.support import poll

__all__ = ["password"]
INTERVAL = 10.0  # the sweep never runs in these tests: only timers end windows


class Replica:
    """One reaper replica's sweeper and timers; what it hands its pool is recorded, not run."""

    def __init__(self, factory: sessionmaker[Session], clock: Clock, *, cap: int = 100) -> None:
        self.started: list[str] = []
        self.sweeper = Sweeper(factory, clock, lambda _n: [], lambda: 1000, self.submit,
                               lambda now: now + timedelta(seconds=60))
        self.timers = ExpiryTimers(factory, clock, self.sweeper.expire, interval=INTERVAL, cap=cap)

    def submit(self, request_id: str, *, in_process: bool) -> None:
        self.started.append(request_id)


@pytest.fixture
def seeded(factory: sessionmaker[Session], password: str) -> sessionmaker[Session]:
    seed_config(factory, [HostSpec(HOST, 5985)], secrets_per_host=2)
    return factory


def elevated(factory: sessionmaker[Session], clock: Clock, seconds: float, account: int = 0) -> str:
    return make_request(factory, secret_id=f"sec-0-{account}", host=HOST, state=State.ELEVATED, now=clock.now(),
                        expires_in=seconds).id


def test_a_window_ending_at_t_is_ended_at_t_not_at_the_next_sweep(seeded: sessionmaker[Session]) -> None:
    clock = FakeClock()
    rid = elevated(seeded, clock, 5)
    end = clock.now() + timedelta(seconds=5)
    replica = Replica(seeded, clock)
    replica.timers.arm()
    assert replica.timers.armed() == [(end, rid)]
    clock.advance(4.999)
    assert not replica.timers.fire_due()
    assert request(seeded, rid).state == State.ELEVATED.value
    clock.advance(0.001)
    assert replica.timers.fire_due()
    row = request(seeded, rid)
    assert (row.state, row.revoking_since, row.end_trigger) == (State.REVOKING.value, end, "checkout_expired")
    assert replica.started == [rid]  # claimed for this replica and handed to its pool at once
    assert [e["request_id"] for e in outbox(seeded, "elevation.expired")] == [rid]


def test_an_extension_moves_its_timer(seeded: sessionmaker[Session]) -> None:
    clock = FakeClock()
    rid = elevated(seeded, clock, 5)
    replica = Replica(seeded, clock)
    replica.timers.arm()
    extended = clock.now() + timedelta(seconds=8)
    set_values(seeded, rid, expires_at=extended, checkout_expires_at=extended)  # as jit-approval grants it
    clock.advance(5)
    # The old timer comes before the next read: the database says the window is still open.
    assert replica.timers.fire_due()
    assert request(seeded, rid).state == State.ELEVATED.value and replica.started == []
    replica.timers.arm()
    assert replica.timers.armed() == [(extended, rid)]
    clock.advance(3)
    assert replica.timers.fire_due()
    row = request(seeded, rid)
    assert (row.state, row.revoking_since) == (State.REVOKING.value, extended)
    assert replica.started == [rid]


def test_a_check_in_before_t_leaves_nothing_to_do(seeded: sessionmaker[Session]) -> None:
    clock = FakeClock()
    rid = elevated(seeded, clock, 5)
    replica = Replica(seeded, clock)
    replica.timers.arm()
    reaper = InProcessReaper(seeded, FakeWinRM(), fast_settings("sqlite:///unused.db"), clock=clock)
    row = request(seeded, rid)
    clock.advance(2)
    reaper.deliver("secret.checked_in", checkout_id=row.checkout_id, secret_id=row.secret_id, reason="manual")
    assert request(seeded, rid).state == State.REVOKED.value
    clock.advance(3)
    assert replica.timers.fire_due()
    assert replica.started == [] and outbox(seeded, "elevation.expired") == []
    assert [a.to_state for a in audit(seeded, rid)].count("REVOKING") == 1
    replica.timers.arm()
    assert replica.timers.armed() == []


def test_two_replicas_arm_the_same_timers_and_each_request_is_ended_once(seeded: sessionmaker[Session]) -> None:
    clock = FakeClock()
    ids = {elevated(seeded, clock, 5, account=i % 2) for i in range(30)}
    replicas = [Replica(seeded, clock), Replica(seeded, clock)]
    for replica in replicas:
        replica.timers.arm()
        assert {rid for _, rid in replica.timers.armed()} == ids
    clock.advance(5)
    start = threading.Barrier(2)

    def fire(replica: Replica) -> None:
        start.wait()
        replica.timers.fire_due()

    threads = [threading.Thread(target=fire, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = (set(r.started) for r in replicas)
    assert first | second == ids and not first & second  # each revocation started by exactly one replica
    assert sorted(e["request_id"] for e in outbox(seeded, "elevation.expired")) == sorted(ids)
    assert [a.to_state for rid in ids for a in audit(seeded, rid)].count("REVOKING") == len(ids)


def test_armed_timers_are_capped_and_a_timer_ends_everything_due_then(seeded: sessionmaker[Session]) -> None:
    clock = FakeClock()
    ids = {elevated(seeded, clock, 3 + i % 2) for i in range(205)}  # more than one ending batch (200)
    replica = Replica(seeded, clock, cap=3)
    replica.timers.arm()
    assert len(replica.timers.armed()) == 3
    clock.advance(4)
    assert replica.timers.fire_due()
    assert sorted(replica.started) == sorted(ids)
    assert all(request(seeded, rid).state == State.REVOKING.value for rid in ids)


def test_the_timer_loop_ends_a_window_without_a_sweep(seeded: sessionmaker[Session]) -> None:
    clock = SystemClock()
    rid = elevated(seeded, clock, 0.3)
    expires_at = request(seeded, rid).expires_at
    stopping = threading.Event()
    replica = Replica(seeded, clock)
    replica.timers.arm()  # the daemon's periodic read

    def loop() -> None:
        while not stopping.is_set():
            replica.timers.step()

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        poll(lambda: replica.started == [rid], timeout=15, what="the timer ended the window")
    finally:
        stopping.set()
        thread.join(INTERVAL + 5)
    row = request(seeded, rid)
    assert row.state == State.REVOKING.value and expires_at is not None
    assert row.revoking_since is not None and row.revoking_since >= expires_at  # never before its end
    assert datetime.now(UTC) > expires_at
