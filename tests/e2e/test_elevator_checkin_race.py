"""A check-in published while `jit-elevator`'s add is in flight wins, with the real `jit-reaper` as the other side.

Both daemons run as processes; the simulated host answers every command 1 s late, and the check-in
is published once the add has run on the host but before its answer is back: the reaper ends the
request and removes the account by SID while the elevator still waits for its add. The elevator
compensates nothing; the reaper does not confirm while the add may still land (the grant's hold
`add_until`) and finishes once the elevator has recorded that it returned. Whatever order things land
in, the account must end out of the group and nothing says "elevated".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.publisher import Publisher
from shared.settings import Settings
from shared.states import State
from tests.e2e.reaper_processes import Reapers, publish
from tests.e2e.reaper_processes import sim as sim
from tests.e2e.test_elevator_replicas import consumers_on, start_elevator, stop
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, HostSpec, make_request, seed_config
from tests.integration.test_elevator_sim import WARNING_FILTERS, actions, publish_approved, state_of
from tests.integration.winrm_fixtures import SVC_PASSWORD
from tests.support import EventTap, poll
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.slow, *(pytest.mark.filterwarnings(f) for f in WARNING_FILTERS)]


def test_check_in_during_a_slow_add_leaves_the_account_out(
        settings: Settings, factory: sessionmaker[Session], sim: SimulatedHost, tmp_path: Path) -> None:
    fast = settings.model_copy(update={"elevation_retry_seconds": 6.0, "elevation_margin_seconds": 1.0,
                                       "lease_seconds": 4.0, "retry_max_seconds": 0.5})
    seed_config(factory, [HostSpec(sim.address, sim.port)])
    req = make_request(factory, secret_id="sec-0-0", host=sim.address)
    reapers = Reapers(fast, tmp_path)
    reapers.start()
    elevator = start_elevator(fast, tmp_path / "elevator.log", {PASSWORD_ENV: SVC_PASSWORD})
    tap = EventTap(fast)
    try:
        poll(lambda: consumers_on(fast, fast.queue("elevator")) == 1, 30, "the elevator consuming")
        sim.set_command_delay(1.0)
        with Publisher(fast) as publisher:
            publish_approved(publisher, req)
        poll(lambda: any(c.script_name == "add_member" for c in list(sim.command_log)), 15,
                   "the add on the host (its answer is 1 s away)")
        publish(fast, "secret.checked_in", checkout_id=req.checkout_id, secret_id=req.secret_id, reason="manual")
        poll(lambda: state_of(factory, req.id) == State.REVOKED
                   and "elevation.superseded" in actions(factory, req.id)
                   and not sim.members(ADMINISTRATORS), 40, "REVOKED with the account out")
        tap.wait_for("elevation.revoked", req.id, timeout=10)
        assert tap.of("elevation.elevated") == []
    finally:
        codes = [stop(elevator), *reapers.stop_all()]
        tap.close()
    assert codes == [0, 0]
    assert sim.members(ADMINISTRATORS) == set()
    done = actions(factory, req.id)
    assert "start_elevation" in done and "elevation.compensated" not in done
    # Never confirmed before the elevator's add had returned (and been recorded).
    assert done.index("elevation.superseded") < done.index("removal_confirmed"), done
