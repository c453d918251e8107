"""MembershipClient against jit-winrm-sim over real HTTP/HTTPS, Basic and NTLM: resolve once, then change
and check by SID; the answers Windows gives (already a member, not a member, unknown principal, unknown
group, a renamed account...)."""

from __future__ import annotations

import pytest

from shared.sids import account_refusal
from shared.winrm import (
    Credentials,
    GroupMember,
    InvalidNameError,
    LogonSession,
    MembershipClient,
    PermanentWinRMError,
    Resolved,
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


def ps_runs(host: SimulatedHost) -> list[str | None]:
    """The adapter scripts the host ran, in order: one entry per PowerShell run."""
    return [r.script_name for r in host.command_log if r.command == "powershell.exe"]


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_resolve_add_already_member_remove_not_member(sim: SimulatedHost, transport: str) -> None:
    ep, cr = endpoint(sim, transport), creds(transport)
    alice = CLIENT.resolve(ep, cr, ADMINS, "CORP\\alice")
    assert alice == Resolved(sim.sid_of("CORP\\alice"), "CORP\\alice", "User", ADMINS, False)
    assert alice.account_sid.startswith("S-1-5-21-") and account_refusal(alice.account_sid, "User") is None
    assert CLIENT.add_member(ep, cr, ADMINS, alice.account_sid) is True
    assert sim.members(ADMINS) == {"CORP\\alice"} and sim.member_sids(ADMINS) == {alice.account_sid}
    assert CLIENT.add_member(ep, cr, ADMINS, alice.account_sid) is False
    assert CLIENT.is_member(ep, cr, ADMINS, alice.account_sid.lower()) is True
    assert CLIENT.resolve(ep, cr, "Administrators", "corp\\ALICE").member is True
    assert CLIENT.list_members(ep, cr, ADMINS) == [GroupMember(alice.account_sid, "CORP\\alice", "User")]
    assert CLIENT.remove_member(ep, cr, ADMINS, alice.account_sid) is True
    assert sim.members(ADMINS) == set()
    assert CLIENT.remove_member(ep, cr, ADMINS, alice.account_sid) is False
    assert CLIENT.is_member(ep, cr, ADMINS, alice.account_sid) is False
    assert CLIENT.list_members(ep, cr, ADMINS) == []
    assert sim.open_shells() <= CLIENT.max_shells_per_host  # pooled for reuse, never more than the cap
    CLIENT.close()
    assert sim.open_shells() == 0  # every shell was deleted


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_https_with_pinned_ca(tls_sim: SimulatedHost, transport: str) -> None:
    ep, cr = endpoint(tls_sim, transport), creds(transport)
    assert ep.scheme == "https" and ep.ca_file
    sid = CLIENT.resolve(ep, cr, RDP_USERS, "CORP\\tls-user").account_sid
    assert CLIENT.add_member(ep, cr, RDP_USERS, sid) is True
    assert CLIENT.remove_member(ep, cr, RDP_USERS, sid) is True


def test_bare_local_account_resolves_to_a_machine_sid(sim: SimulatedHost) -> None:
    resolved = CLIENT.resolve(endpoint(sim), creds("basic"), ADMINS, "localadmin")
    assert resolved.account_name == "WIN-SIM01\\localadmin" and resolved.object_class == "User"
    assert resolved.account_sid == f"{sim.host.machine_sid}-1001"
    assert CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, resolved.account_sid) is True
    assert sim.members(ADMINS) == {"WIN-SIM01\\localadmin"}


@pytest.mark.parametrize(("name", "sid", "cls"), [
    ("Everyone", "S-1-1-0", ""),
    ("Authenticated Users", "S-1-5-11", ""),
    ("Administrators", ADMINS, "Group"),
    ("CORP\\Domain Users", None, "Group"),
])
def test_well_known_principals_resolve_and_are_refused(sim: SimulatedHost, name: str, sid: str | None,
                                                        cls: str) -> None:
    resolved = CLIENT.resolve(endpoint(sim), creds("basic"), ADMINS, name)
    assert resolved.account_sid == (sid or sim.sid_of(name)) and resolved.object_class == cls
    assert account_refusal(resolved.account_sid, resolved.object_class) is not None
    with pytest.raises(InvalidNameError):  # the adapter never changes a group by such a SID
        CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, resolved.account_sid)
    assert ps_runs(sim) == ["resolve"]


def test_group_by_name_and_localised_host() -> None:
    with SimulatedHost(users={"svc-jit": SVC_PASSWORD}, group_names={ADMINS: "Administratoren"}) as host:
        ep, cr = endpoint(host), creds("basic")
        bob = CLIENT.resolve(ep, cr, "Administratoren", "CORP\\bob")
        assert bob.group_sid == ADMINS
        with pytest.raises(GroupNotFoundError) as info:  # the English name does not exist here
            CLIENT.resolve(ep, cr, "Administrators", "CORP\\bob")
        assert not info.value.retryable
        assert CLIENT.add_member(ep, cr, ADMINS, bob.account_sid) is True  # the SID works on every language


def test_unknown_group_sid(sim: SimulatedHost) -> None:
    bob = sim.sid_of("CORP\\bob")
    for call in (CLIENT.add_member, CLIENT.remove_member, CLIENT.is_member):
        with pytest.raises(GroupNotFoundError):
            call(endpoint(sim), creds("basic"), "S-1-5-32-999", bob)
    with pytest.raises(GroupNotFoundError):
        CLIENT.resolve(endpoint(sim), creds("basic"), "S-1-5-32-999", "CORP\\bob")


def test_unknown_principal_does_not_resolve(sim: SimulatedHost) -> None:
    sim.set_unknown_principals(["CORP\\ghost"])
    with pytest.raises(PrincipalNotFoundError) as info:
        CLIENT.resolve(endpoint(sim), creds("basic"), ADMINS, "CORP\\ghost")
    assert isinstance(info.value, PermanentWinRMError) and "resolve" in str(info.value)


def test_remove_of_a_sid_the_host_does_not_know_is_not_read_as_not_a_member(sim: SimulatedHost) -> None:
    stranger = "S-1-5-21-1-2-3-4242"
    with pytest.raises(PrincipalNotFoundError) as info:
        CLIENT.remove_member(endpoint(sim), creds("basic"), ADMINS, stranger)
    assert "remove_member" in str(info.value)
    with pytest.raises(PrincipalNotFoundError):
        CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, stranger)


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_renamed_account_is_still_found_and_removed_by_sid(sim: SimulatedHost, transport: str) -> None:
    ep, cr = endpoint(sim, transport), creds(transport)
    granted = CLIENT.resolve(ep, cr, ADMINS, "app-svc")
    assert CLIENT.add_member(ep, cr, ADMINS, granted.account_sid) is True
    assert sim.rename_account("app-svc", "app-svc-old") == granted.account_sid
    assert sim.members(ADMINS) == {"WIN-SIM01\\app-svc-old"}
    with pytest.raises(PrincipalNotFoundError):  # the name the grant was made for no longer resolves ...
        CLIENT.resolve(ep, cr, ADMINS, "app-svc")
    assert CLIENT.is_member(ep, cr, ADMINS, granted.account_sid) is True  # ... but the SID is still listed
    assert CLIENT.list_members(ep, cr, ADMINS) == [
        GroupMember(granted.account_sid, "WIN-SIM01\\app-svc-old", "User")]
    assert CLIENT.remove_member(ep, cr, ADMINS, granted.account_sid) is True
    assert sim.member_sids(ADMINS) == set()
    assert CLIENT.resolve(ep, cr, ADMINS, "app-svc-old") == Resolved(
        granted.account_sid, "WIN-SIM01\\app-svc-old", "User", ADMINS, False)


def test_add_and_remove_each_verify_in_one_powershell_run(sim: SimulatedHost) -> None:
    ep, cr = endpoint(sim), creds("basic")
    sid = CLIENT.resolve(ep, cr, ADMINS, "CORP\\erin").account_sid
    CLIENT.add_member(ep, cr, ADMINS, sid)
    CLIENT.add_member(ep, cr, ADMINS, sid)
    CLIENT.remove_member(ep, cr, ADMINS, sid)
    CLIENT.remove_member(ep, cr, ADMINS, sid)
    assert ps_runs(sim) == ["resolve", "add_member", "add_member", "remove_member", "remove_member"]
    assert len(sim.command_log) == 5


def test_standing_membership_made_by_someone_else(sim: SimulatedHost) -> None:
    sim.seed_member(ADMINS, "CORP\\standing")
    resolved = CLIENT.resolve(endpoint(sim), creds("basic"), ADMINS, "CORP\\standing")
    assert resolved.member is True
    assert CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, resolved.account_sid) is False


def test_bad_credentials_are_permanent(sim: SimulatedHost) -> None:
    for transport in ("basic", "ntlm"):
        bad = Credentials(creds(transport).username, "wrong-password-123")
        with pytest.raises(AuthenticationError) as info:
            CLIENT.add_member(endpoint(sim, transport), bad, ADMINS, sim.sid_of("CORP\\bob"))
        assert not info.value.retryable
        assert "wrong-password-123" not in str(info.value) and "wrong-password-123" not in repr(info.value)
    assert sim.members(ADMINS) == set()


def test_access_denied_is_permanent(sim: SimulatedHost) -> None:
    sim.set_access_denied(True)
    for call in (CLIENT.add_member, CLIENT.remove_member):
        with pytest.raises(AccessDeniedError):
            call(endpoint(sim), creds("basic"), ADMINS, sim.sid_of("CORP\\bob"))


def test_invalid_data_is_refused_before_any_call(sim: SimulatedHost) -> None:
    with pytest.raises(InvalidNameError) as info:
        CLIENT.resolve(endpoint(sim), creds("basic"), ADMINS, "bob;calc")
    assert isinstance(info.value, ValueError) and info.value.host == f"127.0.0.1:{sim.port}"
    for bad in ("CORP\\bob", "S-1-5-21-1-2-3-1001;calc", "S-1-5-21-1-2-3-513", "S-1-1-0"):
        with pytest.raises(InvalidNameError):
            CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, bad)
    with pytest.raises(InvalidNameError):
        CLIENT.list_members(endpoint(sim), creds("basic"), "Administrators")
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
        sids = []
        for i, host in enumerate(hosts):
            ep = endpoint(host, "ntlm")
            sids.append(CLIENT.resolve(ep, creds("ntlm"), ADMINS, f"CORP\\user{i}").account_sid)
            assert CLIENT.add_member(ep, creds("ntlm"), ADMINS, sids[-1]) is True
        assert [h.members(ADMINS) for h in hosts] == [{"CORP\\user0"}, {"CORP\\user1"}, {"CORP\\user2"}]
        assert CLIENT.is_member(endpoint(hosts[1], "ntlm"), creds("ntlm"), ADMINS, sids[0]) is False
        # a domain account has one SID on every host; local accounts differ per machine
        assert hosts[2].sid_of("CORP\\user0") == sids[0]
        assert hosts[0].sid_of("local1") != hosts[1].sid_of("local1")
    finally:
        for host in hosts:
            host.close()


def test_script_text_is_fixed_and_data_travels_in_env(sim: SimulatedHost) -> None:
    ep, cr = endpoint(sim), creds("basic")
    sid = CLIENT.resolve(ep, cr, ADMINS, "CORP\\erin").account_sid
    CLIENT.add_member(ep, cr, ADMINS, sid)
    CLIENT.list_members(ep, cr, ADMINS)
    assert ps_runs(sim) == ["resolve", "add_member", "list_members"]
    envs = [r.env for r in sim.command_log]
    assert envs == [{"JIT_GROUP_KIND": "SID", "JIT_GROUP": ADMINS, "JIT_MEMBER": "CORP\\erin"},
                    {"JIT_GROUP_SID": ADMINS, "JIT_MEMBER_SID": sid},
                    {"JIT_GROUP_SID": ADMINS}]
    for record in sim.command_log:
        assert record.command == "powershell.exe"
        assert record.arguments.startswith("-NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand ")
        for data in ("erin", sid, ADMINS):
            assert data not in (record.script or "") and data not in record.arguments
