"""The sweeper on both databases: one expiry per request however many sweep at once, lost elevators
ended, due revocations claimed by exactly one worker, stalls announced once per threshold crossing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.reaper.policy import ELEVATOR_LOST
from services.reaper.revocation import Revoker
from services.reaper.sweeper import end_lost_elevations, publish_expiries
from shared.clock import FakeClock
from shared.states import State
from shared.winrm import FakeWinRM, PermanentWinRMError
from tests.factories import HostSpec, make_request, seed_config
from tests.integration.reaper_harness import (
    ADMINS,
    HOST,
    InProcessReaper,
    audit,
    fast_settings,
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


def test_expiry_is_published_once_per_request_with_the_bound_that_was_hit(seeded: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    by_approval = make_request(seeded, secret_id="sec-0-0", host=HOST, state=State.ELEVATED, expires_in=-5)
    by_checkout = make_request(seeded, secret_id="sec-0-1", host=HOST, state=State.APPROVED, expires_in=-1)
    not_due = make_request(seeded, secret_id="sec-0-2", host=HOST, state=State.ELEVATED, expires_in=60)
    assert publish_expiries(seeded, now) == 2
    assert publish_expiries(seeded, now) == 0
    reasons = {e["request_id"]: e["reason"] for e in outbox(seeded, "elevation.expired")}
    assert reasons == {by_approval.id: "checkout_expired", by_checkout.id: "checkout_expired"}
    assert request(seeded, by_approval.id).expiry_event_id is not None
    assert request(seeded, not_due.id).expiry_event_id is None


def test_an_approval_window_shorter_than_the_checkout_expires_as_approval_expired(
        seeded: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    row = make_request(seeded, secret_id="sec-0-0", host=HOST, state=State.ELEVATED, expires_in=600)
    set_values(seeded, row.id, expires_at=now - timedelta(seconds=1))
    publish_expiries(seeded, now)
    assert outbox(seeded, "elevation.expired") == [{"request_id": row.id, "reason": "approval_expired"}]


def test_concurrent_sweepers_publish_each_expiry_exactly_once(seeded: sessionmaker[Session]) -> None:
    ids = {make_request(seeded, secret_id="sec-0-0", host=HOST, state=State.ELEVATED, expires_in=-1).id
           for _ in range(40)}
    now = datetime.now(UTC)
    start = threading.Barrier(4)

    def sweep() -> None:
        start.wait()
        for _ in range(5):
            publish_expiries(seeded, now, limit=7)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = [e["request_id"] for e in outbox(seeded, "elevation.expired")]
    assert sorted(published) == sorted(ids)


def test_an_elevation_whose_elevator_died_is_removed_and_ends_failed(seeded: sessionmaker[Session],
                                                                     database_url: str) -> None:
    fake = FakeWinRM()
    fake.seed(HOST, ADMINS, "acct-0-0")
    now = datetime.now(UTC)
    lost = make_request(seeded, secret_id="sec-0-0", host=HOST, state=State.ELEVATING,
                        lease_until=now - timedelta(seconds=1))
    alive = make_request(seeded, secret_id="sec-0-1", host=HOST, state=State.ELEVATING,
                         lease_until=now + timedelta(seconds=60))
    assert end_lost_elevations(seeded, now) == [lost.id]
    row = request(seeded, lost.id)
    assert (row.state, row.failed, row.error) == (State.REVOKING.value, True, ELEVATOR_LOST)
    assert outbox(seeded, "elevation.failed") == [{"request_id": lost.id, "error": ELEVATOR_LOST}]
    InProcessReaper(seeded, fake, fast_settings(database_url)).sweep()
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
    fake.fail(PermanentWinRMError(HOST, "remove_member", "access denied"), times=None)
    reaper = InProcessReaper(seeded, fake, fast_settings(database_url, stall_threshold_seconds=100), clock)
    rid = make_request(seeded, secret_id="sec-0-0", host=HOST, state=State.ELEVATED).id
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
