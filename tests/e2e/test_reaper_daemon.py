"""Real `jit-reaper` processes: revocation end to end, SIGKILL at each point of a revocation, replicas
revoking each elevation exactly once, and a host that is down when the check-ins arrive. Each elevation
is a real grant (the elevator's add on the simulator, its SIDs in the ledger), so the reaper has
something of ours to remove."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import transaction
from shared.db.models import OutboxEvent, ReconcileTarget
from shared.states import State
from tests.e2e.reaper_processes import Reapers, confirmations, publish, reapers, row, sim, states, wait_for
from tests.factories import PASSWORD_ENV, HostSpec, make_grant, seed_config
from tests.integration.winrm_fixtures import ADMINS, SVC_PASSWORD, WARNING_FILTERS, fast_client
from winrm_sim import SimulatedHost

__all__ = ["reapers", "sim"]
pytestmark = [pytest.mark.rabbitmq, *(pytest.mark.filterwarnings(f) for f in WARNING_FILTERS)]


def elevations(factory: sessionmaker[Session], sim: SimulatedHost, n: int, **values: object) -> list[str]:
    seed_config(factory, [HostSpec("127.0.0.1", sim.port)], secrets_per_host=n)
    client = fast_client()
    ids = [make_grant(factory, client, secret_id=f"sec-0-{i}", host="127.0.0.1", checkout_id=f"co-{i}",
                      environ={PASSWORD_ENV: SVC_PASSWORD}, **values).id for i in range(n)]
    assert len(sim.members(ADMINS)) == n
    return ids


def reconciled(factory: sessionmaker[Session]) -> bool:
    """The reconciler's first listing of the watched groups is done (the next is an interval away)."""
    with transaction(factory) as s:
        runs = list(s.scalars(select(ReconcileTarget.last_run_at)))
    return bool(runs) and all(at is not None for at in runs)


def check_in(reapers: Reapers, i: int) -> None:
    publish(reapers.settings, "secret.checked_in", checkout_id=f"co-{i}", secret_id=f"sec-0-{i}", reason="manual")


def test_a_checkin_is_revoked_and_announced_and_sigterm_exits_cleanly(
        reapers: Reapers, factory: sessionmaker[Session], sim: SimulatedHost) -> None:
    [rid] = elevations(factory, sim, 1)
    ours = sim.open_shells()  # the test's own client pools one
    reapers.start()
    check_in(reapers, 0)
    wait_for(lambda: states(factory, [rid])[rid] == State.REVOKED.value, 20, "REVOKED", reapers.dump)
    assert sim.members(ADMINS) == set()

    def published() -> bool:
        # A short transaction per look: on SQLite a transaction holds the write lock the relay needs.
        with transaction(factory) as s:
            return s.scalar(select(OutboxEvent.published_at).where(OutboxEvent.type == "elevation.revoked")) is not None

    wait_for(published, 10, "elevation.revoked published")
    assert sim.open_shells() > ours  # the reaper's, pooled for the next revocation
    assert reapers.stop_all() == [0]
    # Deleted when it stopped: leaked shells count against the host's MaxShellsPerUser until they expire.
    assert sim.open_shells() == ours


def test_an_ended_window_is_swept_and_revoked(reapers: Reapers, factory: sessionmaker[Session],
                                              sim: SimulatedHost) -> None:
    [rid] = elevations(factory, sim, 1, expires_in=1.0)
    reapers.start()
    wait_for(lambda: states(factory, [rid])[rid] == State.REVOKED.value, 20, "REVOKED", reapers.dump)
    assert row(factory, rid).end_trigger == "checkout_expired" and sim.members(ADMINS) == set()


@pytest.mark.parametrize("moment", ["before_the_call", "during_the_call", "after_the_call_before_the_commit"])
def test_a_reaper_killed_mid_revocation_loses_nothing(reapers: Reapers, factory: sessionmaker[Session],
                                                      sim: SimulatedHost, moment: str) -> None:
    [rid] = elevations(factory, sim, 1)
    victim = reapers.start()
    # The grant made its (host, group) watched: let the reconciler's first listing pass, so the faults
    # below meet the revocation's calls, not that listing.
    wait_for(lambda: reconciled(factory), 20, "the reconciler's first listing", reapers.dump)
    if moment == "before_the_call":
        sim.stop()  # every call is refused: the reaper is in its retry loop, nothing reached the host
    elif moment == "during_the_call":
        sim.inject("delay", action="Command", seconds=4, count=1)  # the remove command is on the wire
    else:
        # Removed on the host, answer pending: a pooled call ends with Signal (its shell stays open for the next).
        sim.inject("delay", action="Signal", seconds=30, count=None)
    check_in(reapers, 0)
    wait_for(lambda: row(factory, rid).lease_until is not None, 20, "a claimed revocation", reapers.dump)
    if moment == "after_the_call_before_the_commit":
        wait_for(lambda: sim.members(ADMINS) == set(), 20, "the removal on the host", reapers.dump)
    else:
        time.sleep(0.5)  # let the call start; the kill is what is tested, not this pause
    assert row(factory, rid).state == State.REVOKING.value
    reapers.kill(victim)
    sim.clear_faults()
    sim.start()
    reapers.start()
    wait_for(lambda: states(factory, [rid])[rid] == State.REVOKED.value, 30, "REVOKED after the kill", reapers.dump)
    assert sim.members(ADMINS) == set()
    assert confirmations(factory, [rid]) == {rid: 1}


def test_replicas_revoke_each_elevation_exactly_once(reapers: Reapers, factory: sessionmaker[Session],
                                                     sim: SimulatedHost) -> None:
    ids = elevations(factory, sim, 15)
    for _ in range(3):
        reapers.start()
    for i in range(len(ids)):
        check_in(reapers, i)
        publish(reapers.settings, "elevation.revoke_requested", request_id=ids[i], operator_id="bob", reason="dup")
    wait_for(lambda: set(states(factory, ids).values()) == {State.REVOKED.value}, 40, "all REVOKED", reapers.dump)
    assert sim.members(ADMINS) == set()
    assert confirmations(factory, ids) == dict.fromkeys(ids, 1)


def test_a_host_down_at_checkin_time_is_cleared_soon_after_it_returns(
        reapers: Reapers, factory: sessionmaker[Session], sim: SimulatedHost) -> None:
    ids = elevations(factory, sim, 10)
    reapers.start()
    sim.down_for(5)
    back = datetime.now(UTC) + timedelta(seconds=5)
    for i in range(len(ids)):
        check_in(reapers, i)
    wait_for(lambda: set(states(factory, ids).values()) == {State.REVOKED.value}, 30, "all REVOKED", reapers.dump)
    last = max(row(factory, i).ended_at for i in ids)
    assert last is not None
    lag = (last.replace(tzinfo=UTC) if last.tzinfo is None else last) - back
    # One capped retry step (0.5 s) + a sweep (0.2 s) + the WinRM calls, with room for a loaded CI box.
    assert lag < timedelta(seconds=4), lag
    assert sim.members(ADMINS) == set()
