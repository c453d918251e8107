"""MembershipClient against jit-winrm-sim over real HTTP/HTTPS, Basic and NTLM: the success paths and
the answers Windows gives (already a member, not a member, unknown principal, unknown group...)."""

from __future__ import annotations

import pytest

from shared.winrm import (
    Credentials,
    InvalidNameError,
    LogonSession,
    MembershipClient,
    PermanentWinRMError,
)
from shared.winrm.errors import AccessDeniedError, AuthenticationError, GroupNotFoundError, PrincipalNotFoundError
from tests.integration.winrm_fixtures import (
    ADMINS,
    RDP_USERS,
    SVC_PASSWORD,
    WARNING_FILTERS,
    creds,
    endpoint,
    sim,
    tls_sim,
)
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.filterwarnings(f) for f in WARNING_FILTERS]
__all__ = ["sim", "tls_sim"]

CLIENT = MembershipClient(operation_timeout_sec=5, read_timeout_sec=10, deadline_sec=20)


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_add_then_already_member_then_remove_then_not_member(sim: SimulatedHost, transport: str) -> None:
    ep, cr = endpoint(sim, transport), creds(transport)
    assert CLIENT.add_member(ep, cr, ADMINS, "CORP\\alice") is True
    assert sim.members(ADMINS) == {"CORP\\alice"}
    assert CLIENT.add_member(ep, cr, ADMINS, "CORP\\alice") is False
    assert CLIENT.is_member(ep, cr, ADMINS, "corp\\ALICE") is True
    assert CLIENT.remove_member(ep, cr, ADMINS, "CORP\\alice") is True
    assert sim.members(ADMINS) == set()
    assert CLIENT.remove_member(ep, cr, ADMINS, "CORP\\alice") is False
    assert CLIENT.is_member(ep, cr, ADMINS, "CORP\\alice") is False
    assert sim.open_shells() == 0  # every shell was deleted


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_https_with_pinned_ca(tls_sim: SimulatedHost, transport: str) -> None:
    ep, cr = endpoint(tls_sim, transport), creds(transport)
    assert ep.scheme == "https" and ep.ca_file
    assert CLIENT.add_member(ep, cr, RDP_USERS, "CORP\\tls-user") is True
    assert CLIENT.remove_member(ep, cr, RDP_USERS, "CORP\\tls-user") is True


def test_bare_local_account_resolves_to_computer_name(sim: SimulatedHost) -> None:
    assert CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, "localadmin") is True
    assert sim.members(ADMINS) == {"WIN-SIM01\\localadmin"}


def test_group_by_name_and_localised_host() -> None:
    with SimulatedHost(users={"svc-jit": SVC_PASSWORD}, group_names={ADMINS: "Administratoren"}) as host:
        ep, cr = endpoint(host), creds("basic")
        assert CLIENT.add_member(ep, cr, "Administratoren", "CORP\\bob") is True
        with pytest.raises(GroupNotFoundError) as info:  # the English name does not exist here
            CLIENT.add_member(ep, cr, "Administrators", "CORP\\bob")
        assert not info.value.retryable
        assert CLIENT.is_member(ep, cr, ADMINS, "CORP\\bob") is True  # the SID works on every language


def test_unknown_group_sid(sim: SimulatedHost) -> None:
    with pytest.raises(GroupNotFoundError):
        CLIENT.add_member(endpoint(sim), creds("basic"), "S-1-5-32-999", "CORP\\bob")
    with pytest.raises(GroupNotFoundError):
        CLIENT.remove_member(endpoint(sim), creds("basic"), "S-1-5-32-999", "CORP\\bob")


def test_unknown_principal_fails_add_but_remove_is_success(sim: SimulatedHost) -> None:
    sim.set_unknown_principals(["CORP\\ghost"])
    ep, cr = endpoint(sim), creds("basic")
    with pytest.raises(PrincipalNotFoundError) as info:
        CLIENT.add_member(ep, cr, ADMINS, "CORP\\ghost")
    assert isinstance(info.value, PermanentWinRMError) and "add_member" in str(info.value)
    assert CLIENT.remove_member(ep, cr, ADMINS, "CORP\\ghost") is False
    assert CLIENT.is_member(ep, cr, ADMINS, "CORP\\ghost") is False


def test_standing_membership_made_by_someone_else(sim: SimulatedHost) -> None:
    sim.seed_member(ADMINS, "CORP\\standing")
    assert CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, "CORP\\standing") is False


def test_bad_credentials_are_permanent(sim: SimulatedHost) -> None:
    for transport in ("basic", "ntlm"):
        bad = Credentials(creds(transport).username, "wrong-password-123")
        with pytest.raises(AuthenticationError) as info:
            CLIENT.add_member(endpoint(sim, transport), bad, ADMINS, "CORP\\bob")
        assert not info.value.retryable
        assert "wrong-password-123" not in str(info.value) and "wrong-password-123" not in repr(info.value)
    assert sim.members(ADMINS) == set()


def test_access_denied_is_permanent(sim: SimulatedHost) -> None:
    sim.set_access_denied(True)
    with pytest.raises(AccessDeniedError):
        CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, "CORP\\bob")


def test_invalid_name_is_refused_before_any_call(sim: SimulatedHost) -> None:
    with pytest.raises(InvalidNameError) as info:
        CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, "bob;calc")
    assert isinstance(info.value, ValueError) and info.value.host == f"127.0.0.1:{sim.port}"
    with pytest.raises(InvalidNameError):
        CLIENT.logoff(endpoint(sim), creds("basic"), "1; logoff 2")
    assert sim.command_log == []


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_sessions_listed_and_logged_off(sim: SimulatedHost, transport: str) -> None:
    ep, cr = endpoint(sim, transport), creds(transport)
    first = sim.add_session("CORP\\carol")
    second = sim.add_session("carol", state="Disc")
    sim.add_session("dave")
    sessions = CLIENT.list_sessions(ep, cr, "CORP\\carol")
    assert [(s.session_id, s.account, s.state) for s in sessions] == [(first, "carol", "Active"),
                                                                     (second, "carol", "Disc")]
    assert all(isinstance(s, LogonSession) and s.logon_time for s in sessions)
    CLIENT.logoff(ep, cr, first)
    CLIENT.logoff(ep, cr, first)  # already gone: still done
    assert [s.session_id for s in CLIENT.list_sessions(ep, cr, "CORP\\carol")] == [second]
    assert CLIENT.list_sessions(ep, cr, "CORP\\nobody") == []


def test_three_hosts_at_once() -> None:
    hosts = [SimulatedHost(address, users={"svc-jit": SVC_PASSWORD}, computer_name=f"WIN-{i}").start()
             for i, address in enumerate(("127.0.0.1", "127.0.0.2", "127.0.0.3"))]
    try:
        for i, host in enumerate(hosts):
            assert CLIENT.add_member(endpoint(host, "ntlm"), creds("ntlm"), ADMINS, f"CORP\\user{i}") is True
        assert [h.members(ADMINS) for h in hosts] == [{"CORP\\user0"}, {"CORP\\user1"}, {"CORP\\user2"}]
        assert CLIENT.is_member(endpoint(hosts[1], "ntlm"), creds("ntlm"), ADMINS, "CORP\\user0") is False
    finally:
        for host in hosts:
            host.close()


def test_script_text_is_fixed_and_data_travels_in_env(sim: SimulatedHost) -> None:
    CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, "CORP\\erin")
    names = [r.script_name for r in sim.command_log]
    assert names == ["add_member", "is_member"]
    for record in sim.command_log:
        assert record.command == "powershell.exe"
        assert record.arguments.startswith("-NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand ")
        assert record.env == {"JIT_GROUP_KIND": "SID", "JIT_GROUP": ADMINS, "JIT_MEMBER": "CORP\\erin"}
        assert "erin" not in (record.script or "") and "erin" not in record.arguments
