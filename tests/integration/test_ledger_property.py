"""A property of the ledger: whatever the interleaving of grants, check-ins, expiries, races, crashes and host
failures, once the faults stop and the durable machinery has run (reaper retries, lost-elevator sweep,
reconciler), the host's group holds exactly the standing membership plus the active grants'.

Real elevator, reaper, sweeper and reconciler code on SQLite, one in-memory host; three grants (three
secrets) of one account, so every step can overlap with another grant of the same membership.
CI runs 60 examples; `JIT_LEDGER_EXAMPLES=1000 .venv/bin/pytest tests/integration/test_ledger_property.py`
runs a longer search.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from services.reaper.sweeper import end_expired, end_lost_elevations
from shared.db.engine import make_engine, session_factory, transaction
from shared.db.migrate import upgrade
from shared.db.models import Hold, ReconcileTarget, Request
from shared.states import State
from shared.winrm import Credentials, HostEndpoint, RetryableWinRMError
from tests.factories import ADMINISTRATORS, HostSpec, seed_config
from tests.integration.ledger_world import ACCOUNT, ENV, HOST, HookedWinRM, World

GRANTS = 3
ENDPOINT = HostEndpoint(HOST, "http", 5985, "basic")
CREDS = Credentials("svc", "pw")


class Killed(BaseException):
    """The elevator process dies (SIGKILL): nothing after this point of its handler runs."""


grant = st.integers(min_value=0, max_value=GRANTS - 1)
step = st.one_of(
    st.tuples(st.just("elevate"), grant),
    st.tuples(st.just("elevate_while_other_ends"), grant, grant),
    st.tuples(st.just("check_in_during_add"), grant),
    st.tuples(st.just("elevator_killed_after_add"), grant),
    st.tuples(st.just("elevator_killed_before_add"), grant),
    st.tuples(st.just("end"), grant),
    st.tuples(st.just("end_host_down"), grant),
    st.tuples(st.just("expire"), grant),
    st.tuples(st.just("reconcile"),),
    st.tuples(st.just("reconcile_host_down"),),
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for each example (migrating per example would dominate the run)."""
    path = tmp_path_factory.mktemp("ledger") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def _world(template: Path, directory: str) -> World:
    path = Path(directory) / "jit.db"
    path.write_bytes(template.read_bytes())
    factory = session_factory(make_engine(f"sqlite:///{path}"))
    seed_config(factory, [HostSpec(HOST, 5985)], secrets_per_host=GRANTS)
    return World(factory, HookedWinRM())


def _play(world: World, requests: list[Request], move: tuple[object, ...]) -> None:
    fake = world.fake
    kind = move[0]
    g = requests[int(move[1])] if len(move) > 1 else requests[0]  # type: ignore[call-overload]
    if kind == "elevate":
        world.elevate(g)
    elif kind == "elevate_while_other_ends":
        other = requests[int(move[2])]  # type: ignore[call-overload]
        fake.after["resolve"] = lambda: world.end(other)
        world.elevate(g)
        fake.after.pop("resolve", None)
    elif kind == "check_in_during_add":
        def check_in_and_revoke() -> None:
            for request_id in world.check_in(g):
                world.revoke(request_id)
        fake.before["add_member"] = check_in_and_revoke
        world.elevate(g)
        fake.before.pop("add_member", None)
    elif kind in ("elevator_killed_after_add", "elevator_killed_before_add"):
        def die() -> None:
            fake.before.pop("add_member", None)
            if kind == "elevator_killed_after_add":
                fake.add_member(ENDPOINT, CREDS, ADMINISTRATORS, fake.sid_of(HOST, ACCOUNT))
            raise Killed
        fake.before["add_member"] = die
        with contextlib.suppress(Killed):
            world.elevate(g)
        fake.before.pop("add_member", None)
    elif kind == "end":
        world.end(g)
    elif kind == "end_host_down":
        fake.fail(RetryableWinRMError(HOST, "remove_member", "host down"), times=None, operation="remove_member")
        world.end(g)
        fake.clear_faults()
    elif kind == "expire":
        now = datetime.now(UTC)
        with transaction(world.factory) as session:
            session.execute(update(Request).where(Request.id == g.id, Request.expires_at.is_not(None))
                            .values(expires_at=now - timedelta(seconds=1)))
        for request_id in end_expired(world.factory, now, now + timedelta(seconds=60), room=10):
            world.revoke(request_id)
    elif kind in ("reconcile", "reconcile_host_down"):
        if kind == "reconcile_host_down":
            fake.fail(RetryableWinRMError(HOST, "list_members", "host down"), times=None)
        _reconcile_now(world)
        fake.clear_faults()


def _reconcile_now(world: World) -> None:
    with transaction(world.factory) as session:
        session.execute(update(ReconcileTarget).values(next_at=datetime.now(UTC), lease_until=None))
    world.reconciler()


def _settle(world: World) -> None:
    """Faults have stopped: what the durable machinery does given time (leases pass, sweeps and retries run)."""
    future = datetime.now(UTC) + timedelta(days=1)
    end_lost_elevations(world.factory, future)  # elevators that died mid-add are taken over
    with transaction(world.factory) as session:  # every elevator lease (and with it add_until) has passed
        session.execute(update(Hold).values(add_until=None))
    for _ in range(3):
        with transaction(world.factory) as session:
            revoking = list(session.scalars(select(Request.id).where(Request.state == State.REVOKING.value)))
        for request_id in revoking:
            world.revoke(request_id)
        _reconcile_now(world)


def _states(world: World, requests: list[Request]) -> list[str]:
    return [world.state(r) for r in requests]


@settings(max_examples=int(os.environ.get("JIT_LEDGER_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(standing=st.booleans(), moves=st.lists(step, min_size=1, max_size=8))
def test_the_group_converges_to_baseline_plus_active_grants(
        template: Path, monkeypatch: pytest.MonkeyPatch, standing: bool, moves: list[tuple[object, ...]]) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    with tempfile.TemporaryDirectory() as directory:
        world = _world(template, directory)
        try:
            if standing:
                world.fake.seed(HOST, ADMINISTRATORS, ACCOUNT)
            requests = [world.request(f"sec-0-{i}") for i in range(GRANTS)]
            for move in moves:
                _play(world, requests, move)
            _settle(world)
            states = _states(world, requests)
            assert State.ELEVATING.value not in states and State.REVOKING.value not in states, states
            active = State.ELEVATED.value in states
            assert world.member() == (standing or active), (states, standing)
            for request in requests:  # now end everything that is still active
                world.end(request)
            _settle(world)
            assert all(s in ("REVOKED", "FAILED") for s in _states(world, requests)), _states(world, requests)
            assert world.member() == standing, "the group is not the baseline once every grant has ended"
        finally:
            bind = world.factory.kw["bind"]
            bind.dispose()
