"""The reaper against the WinRM simulator over real HTTP, with the real adapter, on both databases:
removal by SID and verification, logon sessions, and each fault mode (down, 500s, slow, bad credentials).
Each grant is made by the real elevator against the same simulator, so the ledger holds its SIDs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.states import State
from shared.winrm import MembershipClient
from tests.factories import PASSWORD_ENV, HostSpec, make_grant, seed_config
from tests.integration.reaper_harness import InProcessReaper, audit, fast_settings, outbox, request
from tests.integration.winrm_fixtures import ADMINS, SVC_PASSWORD, SVC_USER, WARNING_FILTERS
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.filterwarnings(f) for f in WARNING_FILTERS]
ACCOUNT = "acct-0-0"


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedHost]:
    monkeypatch.setenv(PASSWORD_ENV, SVC_PASSWORD)
    host = SimulatedHost(users={SVC_USER: SVC_PASSWORD}).start()
    yield host
    host.close()


def client() -> MembershipClient:
    return MembershipClient(operation_timeout_sec=1, read_timeout_sec=2, deadline_sec=10.0)


def make_reaper(factory: sessionmaker[Session], database_url: str, sim: SimulatedHost, *, on_revoke: str = "report",
                **settings: object) -> InProcessReaper:
    seed_config(factory, [HostSpec("127.0.0.1", sim.port)], on_revoke=on_revoke)
    return InProcessReaper(factory, client(), fast_settings(database_url, **settings))


def elevate(factory: sessionmaker[Session], sim: SimulatedHost) -> str:
    """A grant the elevator made on the simulator: its add put the account in."""
    rid = make_grant(factory, client(), secret_id="sec-0-0", host="127.0.0.1").id
    assert sim.members(ADMINS) == {f"WIN-SIM01\\{ACCOUNT}"}
    return rid


def revoke(reaper: InProcessReaper, request_id: str) -> None:
    reaper.deliver("elevation.revoke_requested", request_id=request_id, operator_id="bob", reason="test")


def sweep_until_ended(reaper: InProcessReaper, request_id: str, timeout: float) -> float:
    """Sweep as the daemon's Periodic would; returns when the request ended (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if request(reaper.factory, request_id).state != State.REVOKING.value:
            return time.monotonic()
        reaper.sweep()
        time.sleep(0.05)
    raise AssertionError(f"{request_id} still {request(reaper.factory, request_id).state} after {timeout} s")


def test_revocation_removes_the_account_on_the_host(factory: sessionmaker[Session], database_url: str,
                                                    sim: SimulatedHost) -> None:
    reaper = make_reaper(factory, database_url, sim)
    rid = elevate(factory, sim)
    revoke(reaper, rid)
    assert request(factory, rid).state == State.REVOKED.value
    assert sim.members(ADMINS) == set()
    details = audit(factory, rid)[-1].details
    assert details["host_said"] == "removed"
    assert (details["group_sid"], details["account_sid"]) == (ADMINS, sim.sid_of(ACCOUNT))  # removed by SID


@pytest.mark.parametrize("on_revoke", ["logoff", "report"])
def test_sessions_that_outlive_the_group_change_are_logged_off_or_reported(
        factory: sessionmaker[Session], database_url: str, sim: SimulatedHost, on_revoke: str) -> None:
    reaper = make_reaper(factory, database_url, sim, on_revoke=on_revoke)
    rid = elevate(factory, sim)
    session_id = sim.add_session(ACCOUNT)
    sim.add_session("someone-else")
    revoke(reaper, rid)
    [event] = outbox(factory, "elevation.revoked")
    assert [(s["session_id"], s["account"]) for s in event["sessions"]] == [(session_id, ACCOUNT)]
    left = {s["user"] for s in sim.state()["sessions"]}
    if on_revoke == "logoff":
        assert event["sessions"][0]["action"] == "logged_off" and left == {"someone-else"}
    else:
        assert event["sessions"][0]["action"] == "reported" and left == {ACCOUNT, "someone-else"}
    assert audit(factory, rid)[-1].details["sessions"] == event["sessions"]


def test_a_host_down_at_revocation_time_is_revoked_soon_after_it_returns(
        factory: sessionmaker[Session], database_url: str, sim: SimulatedHost) -> None:
    reaper = make_reaper(factory, database_url, sim, retry_max_seconds=1.0)
    rid = elevate(factory, sim)
    sim.down_for(3)
    back_at = time.monotonic() + 3
    revoke(reaper, rid)
    row = request(factory, rid)
    assert row.state == State.REVOKING.value and row.last_error
    ended = sweep_until_ended(reaper, rid, timeout=15)
    assert request(factory, rid).state == State.REVOKED.value and sim.members(ADMINS) == set()
    assert ended - back_at < 1.0 + 1.5  # one capped retry step plus the call itself


def test_server_errors_are_retried_in_process(factory: sessionmaker[Session], database_url: str,
                                              sim: SimulatedHost) -> None:
    reaper = make_reaper(factory, database_url, sim, retry_in_process_seconds=5.0)
    rid = elevate(factory, sim)
    sim.inject("http500", count=2)
    revoke(reaper, rid)
    row = request(factory, rid)
    assert row.state == State.REVOKED.value and row.attempts == 3
    assert sim.members(ADMINS) == set()


def test_slow_answers_still_end_in_a_confirmed_removal(factory: sessionmaker[Session], database_url: str,
                                                       sim: SimulatedHost) -> None:
    reaper = make_reaper(factory, database_url, sim)
    rid = elevate(factory, sim)
    sim.inject("delay", seconds=0.5, count=3)
    revoke(reaper, rid)
    assert request(factory, rid).state == State.REVOKED.value and sim.members(ADMINS) == set()


def test_rejected_credentials_keep_retrying_durably_without_leaking_the_password(
        factory: sessionmaker[Session], database_url: str, sim: SimulatedHost) -> None:
    reaper = make_reaper(factory, database_url, sim)
    rid = elevate(factory, sim)
    sim.reject_credentials()
    revoke(reaper, rid)
    for _ in range(3):
        time.sleep(0.1)
        reaper.sweep()
    row = request(factory, rid)
    assert row.state == State.REVOKING.value and row.attempts >= 2
    assert row.last_error and SVC_PASSWORD not in row.last_error
    assert sim.members(ADMINS) == {f"WIN-SIM01\\{ACCOUNT}"}
    sim.reject_credentials(False)
    sweep_until_ended(reaper, rid, timeout=5)
    assert request(factory, rid).state == State.REVOKED.value and sim.members(ADMINS) == set()
