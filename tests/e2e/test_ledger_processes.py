"""Issue 10's findings with the real `jit-elevator` and `jit-reaper` processes, the run's broker, both databases
and the simulated host over WinRM: a renamed account, a configuration change under an active grant, an
elevator SIGKILLed after its add landed during a check-in, and overlapping grants of one account.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pika
import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.publisher import Publisher
from shared.db.engine import transaction
from shared.db.models import Host, Secret, TaskSecret
from shared.settings import Settings
from shared.states import State
from tests.e2e.reaper_processes import Reapers, publish
from tests.e2e.reaper_processes import sim as sim
from tests.e2e.test_elevator_replicas import consumers_on, start_elevator, stop
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, HostSpec, make_request, seed_config
from tests.integration.test_elevator_sim import WARNING_FILTERS, publish_approved, state_of
from tests.integration.winrm_fixtures import SVC_PASSWORD
from tests.support import poll
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.slow, *(pytest.mark.filterwarnings(f) for f in WARNING_FILTERS)]


class Daemons:
    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.reapers = Reapers(settings, tmp_path)
        self.reapers.start()
        self.log = tmp_path / "elevator.log"
        self.elevator = start_elevator(settings, self.log, {PASSWORD_ENV: SVC_PASSWORD})
        poll(lambda: consumers_on(settings, settings.queue("elevator")) == 1, 30, "the elevator consuming")

    def restart_elevator(self) -> None:
        self.elevator = start_elevator(self.settings, self.log, {PASSWORD_ENV: SVC_PASSWORD})

    def stop(self) -> list[int | None]:
        codes: list[int | None] = []
        if self.elevator.poll() is None:
            codes.append(stop(self.elevator))
        return [*codes, *self.reapers.stop_all()]


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(update={"elevation_retry_seconds": 4.0, "elevation_margin_seconds": 1.0,
                                       "lease_seconds": 3.0, "retry_max_seconds": 0.5,
                                       "retry_in_process_seconds": 1.0, "winrm_deadline_seconds": 4.0})


def elevate(settings: Settings, factory: sessionmaker[Session], request_id: str, secret_id: str, checkout_id: str,
            sim: SimulatedHost) -> None:
    req = make_request(factory, id=request_id, secret_id=secret_id, host=sim.address, checkout_id=checkout_id,
                       account="acct-0-0")
    with Publisher(settings) as publisher:
        publish_approved(publisher, req)


def check_in(settings: Settings, checkout_id: str, secret_id: str) -> None:
    publish(settings, "secret.checked_in", checkout_id=checkout_id, secret_id=secret_id, reason="service_closed")


def test_a_renamed_account_is_removed_by_sid(fast: Settings, factory: sessionmaker[Session], sim: SimulatedHost,
                                             tmp_path: Path) -> None:
    seed_config(factory, [HostSpec(sim.address, sim.port)])
    daemons = Daemons(fast, tmp_path)
    try:
        elevate(fast, factory, "req-rename", "sec-0-0", "co-rename", sim)
        poll(lambda: state_of(factory, "req-rename") == State.ELEVATED, 30, "ELEVATED")
        sid = sim.sid_of("acct-0-0")
        assert sid in sim.member_sids(ADMINISTRATORS)
        assert sim.rename_account("acct-0-0", "not-me") == sid  # the administrator renames itself
        check_in(fast, "co-rename", "sec-0-0")
        poll(lambda: state_of(factory, "req-rename") == State.REVOKED, 30, "REVOKED")
        assert sid not in sim.member_sids(ADMINISTRATORS), "REVOKED while the SID is still in the group"
    finally:
        assert daemons.stop() == [0, 0]


def test_a_grant_whose_host_is_removed_from_the_configuration_still_ends(
        fast: Settings, factory: sessionmaker[Session], sim: SimulatedHost, tmp_path: Path) -> None:
    seed_config(factory, [HostSpec(sim.address, sim.port)])
    daemons = Daemons(fast, tmp_path)
    try:
        elevate(fast, factory, "req-cfg", "sec-0-0", "co-cfg", sim)
        poll(lambda: state_of(factory, "req-cfg") == State.ELEVATED, 30, "ELEVATED")
        with transaction(factory) as session:  # host and secret gone, as an apply --end-active would leave them
            session.execute(delete(TaskSecret))
            session.execute(delete(Host))
            session.execute(delete(Secret))
        check_in(fast, "co-cfg", "sec-0-0")
        poll(lambda: state_of(factory, "req-cfg") == State.REVOKED, 30, "REVOKED")
        assert sim.member_sids(ADMINISTRATORS) == set()
    finally:
        assert daemons.stop() == [0, 0]


def test_elevator_killed_after_its_add_landed_during_a_check_in(
        fast: Settings, factory: sessionmaker[Session], sim: SimulatedHost, tmp_path: Path) -> None:
    """The add runs on the slow host, the check-in is processed, the elevator is SIGKILLed before its answer:
    nothing in memory survives, and the account must still end out of the group."""
    seed_config(factory, [HostSpec(sim.address, sim.port)])
    daemons = Daemons(fast, tmp_path)
    try:
        sim.set_command_delay(1.5)
        elevate(fast, factory, "req-kill", "sec-0-0", "co-kill", sim)
        poll(lambda: any(c.script_name == "add_member" for c in list(sim.command_log)), 20, "the add on the host")
        check_in(fast, "co-kill", "sec-0-0")
        poll(lambda: state_of(factory, "req-kill") == State.REVOKING, 20, "REVOKING")
        daemons.elevator.send_signal(signal.SIGKILL)
        daemons.elevator.wait(10)
        sim.set_command_delay(0)
        poll(lambda: state_of(factory, "req-kill") in (State.REVOKED, State.FAILED)
             and not sim.member_sids(ADMINISTRATORS), 60, "ended with the account out")
    finally:
        codes = daemons.stop()
    assert codes == [0]  # the reaper; the elevator was killed


def test_overlapping_grants_of_one_account_end_with_the_account_out(
        fast: Settings, factory: sessionmaker[Session], sim: SimulatedHost, tmp_path: Path) -> None:
    """A is elevated; B's add is in flight on a slow host when A is checked in; then B is checked in."""
    seed_config(factory, [HostSpec(sim.address, sim.port)], secrets_per_host=2)
    daemons = Daemons(fast, tmp_path)
    try:
        elevate(fast, factory, "req-a", "sec-0-0", "co-a", sim)
        poll(lambda: state_of(factory, "req-a") == State.ELEVATED, 30, "A ELEVATED")
        sim.set_command_delay(1.0)
        elevate(fast, factory, "req-b", "sec-0-1", "co-b", sim)
        poll(lambda: state_of(factory, "req-b") == State.ELEVATING, 20, "B ELEVATING")
        check_in(fast, "co-a", "sec-0-0")
        poll(lambda: state_of(factory, "req-a") == State.REVOKED, 40, "A REVOKED")
        poll(lambda: state_of(factory, "req-b") == State.ELEVATED, 40, "B ELEVATED")
        sid = sim.sid_of("acct-0-0")
        assert sid in sim.member_sids(ADMINISTRATORS), "B is active: its membership must stay"
        sim.set_command_delay(0)
        check_in(fast, "co-b", "sec-0-1")
        poll(lambda: state_of(factory, "req-b") == State.REVOKED, 30, "B REVOKED")
        assert sid not in sim.member_sids(ADMINISTRATORS), "the account stayed an administrator"
    finally:
        assert daemons.stop() == [0, 0]


def test_an_expiry_that_no_reaper_receives_still_ends_the_elevation(
        fast: Settings, factory: sessionmaker[Session], sim: SimulatedHost, tmp_path: Path) -> None:
    """`elevation.expired` is unbound from the reaper's queue (as if every copy were dead-lettered): the
    sweeper ends the window in the database, so the account is removed all the same."""
    seed_config(factory, [HostSpec(sim.address, sim.port)])
    daemons = Daemons(fast, tmp_path)
    try:
        with pika.BlockingConnection(pika.URLParameters(fast.amqp_url)) as connection:
            connection.channel().queue_unbind(fast.queue("reaper"), fast.exchange, routing_key="elevation.expired")
        req = make_request(factory, id="req-exp", secret_id="sec-0-0", host=sim.address, checkout_id="co-exp",
                           account="acct-0-0", expires_in=6)
        with Publisher(fast) as publisher:
            publish_approved(publisher, req)
        poll(lambda: state_of(factory, "req-exp") == State.ELEVATED, 30, "ELEVATED")
        poll(lambda: state_of(factory, "req-exp") == State.REVOKED, 40, "REVOKED after the window")
        assert sim.member_sids(ADMINISTRATORS) == set()
    finally:
        assert daemons.stop() == [0, 0]


def test_a_standing_membership_survives_a_request_that_never_added(
        fast: Settings, factory: sessionmaker[Session], sim: SimulatedHost, tmp_path: Path) -> None:
    seed_config(factory, [HostSpec(sim.address, sim.port)])
    sim.seed_member(ADMINISTRATORS, "acct-0-0")  # an administrator before any grant
    reapers = Reapers(fast, tmp_path)
    reapers.start()
    try:
        make_request(factory, id="req-standing", secret_id="sec-0-0", host=sim.address, checkout_id="co-st",
                     account="acct-0-0")  # APPROVED; no elevator runs
        check_in(fast, "co-st", "sec-0-0")
        poll(lambda: state_of(factory, "req-standing") == State.REVOKED, 30, "REVOKED")
        assert sim.sid_of("acct-0-0") in sim.member_sids(ADMINISTRATORS), "a standing membership was removed"
    finally:
        assert reapers.stop_all() == [0]
