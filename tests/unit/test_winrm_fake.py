"""FakeWinRM follows the port's rules, and the value objects keep the password out of sight."""

from __future__ import annotations

import time

import pytest

from shared.sids import account_refusal
from shared.winrm import (
    Credentials,
    FakeWinRM,
    GroupMember,
    HostEndpoint,
    InvalidNameError,
    LogonSession,
    Resolved,
    RetryableWinRMError,
    WinRMPort,
)
from shared.winrm.errors import GroupNotFoundError, PrincipalNotFoundError

HOST = HostEndpoint("10.0.0.5")
CREDS = Credentials("CORP\\svc-jit", "hunter2-secret")
ADMINS = "S-1-5-32-544"


def test_is_a_winrm_port() -> None:
    port: WinRMPort = FakeWinRM()
    resolved = port.resolve(HOST, CREDS, ADMINS, "CORP\\bob")
    assert port.is_member(HOST, CREDS, ADMINS, resolved.account_sid) is False


def test_deterministic_sids() -> None:
    fake = FakeWinRM()
    assert fake.sid_of("10.0.0.5", "alice") == "S-1-5-21-1000-1000-1000-1001"
    assert fake.sid_of("10.0.0.5", "bob") == "S-1-5-21-1000-1000-1000-1002"
    assert fake.sid_of("10.0.0.5", "ALICE") == "S-1-5-21-1000-1000-1000-1001"
    assert fake.sid_of("10.0.0.6", "bob") == "S-1-5-21-1000-1000-1000-1001"  # per host
    corp = fake.sid_of("10.0.0.5", "CORP\\bob")
    assert corp == "S-1-5-21-2000-2000-2000-1001" and fake.sid_of("10.0.0.6", "corp\\BOB") == corp
    assert fake.sid_of("10.0.0.5", "OTHER\\bob") == "S-1-5-21-2000-2000-2001-1001"
    assert FakeWinRM().sid_of("h", "alice") == "S-1-5-21-1000-1000-1000-1001"


def test_resolve() -> None:
    fake = FakeWinRM(unknown_principals={"CORP\\ghost"})
    resolved = fake.resolve(HOST, CREDS, "administrators", "corp\\Bob")
    assert resolved == Resolved("S-1-5-21-2000-2000-2000-1001", "corp\\Bob", "User", ADMINS, False)
    fake.seed("10.0.0.5", ADMINS, "CORP\\bob")
    assert fake.resolve(HOST, CREDS, ADMINS, "CORP\\BOB").member is True
    with pytest.raises(PrincipalNotFoundError):
        fake.resolve(HOST, CREDS, ADMINS, "CORP\\ghost")
    with pytest.raises(GroupNotFoundError):
        fake.resolve(HOST, CREDS, "S-1-5-32-999", "CORP\\bob")
    with pytest.raises(InvalidNameError):
        fake.resolve(HOST, CREDS, ADMINS, "bob;calc")
    assert [c.operation for c in fake.calls] == ["resolve", "resolve", "resolve", "resolve"]


@pytest.mark.parametrize(("name", "sid", "cls"), [
    ("Everyone", "S-1-1-0", ""),
    ("Authenticated Users", "S-1-5-11", ""),
    ("CORP\\Domain Users", "S-1-5-21-2000-2000-2000-513", "Group"),
    ("Administrators", ADMINS, "Group"),
    ("BUILTIN\\Administrators", ADMINS, "Group"),
])
def test_well_known_principals_resolve_to_real_sids(name: str, sid: str, cls: str) -> None:
    resolved = FakeWinRM().resolve(HOST, CREDS, ADMINS, name)
    assert (resolved.account_sid, resolved.object_class) == (sid, cls)
    assert account_refusal(resolved.account_sid, resolved.object_class) is not None


def test_membership_by_sid() -> None:
    fake = FakeWinRM()
    bob = fake.resolve(HOST, CREDS, ADMINS, "CORP\\bob").account_sid
    assert fake.add_member(HOST, CREDS, ADMINS, bob) is True
    assert fake.add_member(HOST, CREDS, ADMINS.lower(), bob.lower()) is False
    assert fake.members("10.0.0.5", ADMINS) == {"CORP\\bob"}
    assert fake.members("10.0.0.5", "Administrators") == {"CORP\\bob"}
    assert fake.member_sids("10.0.0.5", ADMINS) == {bob}
    assert fake.members("10.0.0.6", ADMINS) == set()
    assert fake.list_members(HOST, CREDS, ADMINS) == [GroupMember(bob, "CORP\\bob", "User")]
    assert fake.is_member(HOST, CREDS, ADMINS, bob) is True
    assert fake.remove_member(HOST, CREDS, ADMINS, bob) is True
    assert fake.remove_member(HOST, CREDS, ADMINS, bob) is False
    assert fake.is_member(HOST, CREDS, ADMINS, bob) is False
    with pytest.raises(GroupNotFoundError):
        fake.add_member(HOST, CREDS, "S-1-5-32-999", bob)
    stranger = "S-1-5-21-9-9-9-1001"
    with pytest.raises(PrincipalNotFoundError):
        fake.add_member(HOST, CREDS, ADMINS, stranger)
    with pytest.raises(PrincipalNotFoundError):  # an unknown SID is never "not a member"
        fake.remove_member(HOST, CREDS, ADMINS, stranger)
    ops = [c.operation for c in fake.calls]
    assert ops[:4] == ["resolve", "add_member", "add_member", "list_members"]


@pytest.mark.parametrize("bad", ["CORP\\bob", "S-1-1-0", "S-1-5-11", "S-1-5-32-544", "S-1-5-21-1-2-3-513",
                                 "S-1-5-21-1-2-3-1001;calc", ""])
def test_only_account_sids_are_changed(bad: str) -> None:
    fake = FakeWinRM()
    for call in (fake.add_member, fake.remove_member, fake.is_member):
        with pytest.raises(InvalidNameError):
            call(HOST, CREDS, ADMINS, bad)
    assert fake.calls == []


def test_rename_keeps_the_sid() -> None:
    fake = FakeWinRM()
    fake.seed("10.0.0.5", ADMINS, "alice")
    sid = fake.sid_of("10.0.0.5", "alice")
    fake.rename("10.0.0.5", "alice", "alice2")
    assert fake.members("10.0.0.5", ADMINS) == {"alice2"} and fake.member_sids("10.0.0.5", ADMINS) == {sid}
    assert fake.sid_of("10.0.0.5", "Alice2") == sid
    with pytest.raises(PrincipalNotFoundError):  # the old name no longer resolves
        fake.resolve(HOST, CREDS, ADMINS, "alice")
    assert fake.resolve(HOST, CREDS, ADMINS, "alice2") == Resolved(sid, "alice2", "User", ADMINS, True)
    assert fake.remove_member(HOST, CREDS, ADMINS, sid) is True
    fake.rename("10.0.0.5", "CORP\\bob", "CORP\\robert")
    assert fake.sid_of("10.0.0.6", "CORP\\robert") == fake.sid_of("10.0.0.5", "CORP\\robert")
    with pytest.raises(ValueError):
        fake.rename("10.0.0.5", "CORP\\robert", "robert")


def test_faults_and_delay() -> None:
    fake = FakeWinRM()
    bob = fake.sid_of("10.0.0.5", "CORP\\bob")
    fake.fail(RetryableWinRMError("10.0.0.5:5986", "add_member", "down"), times=2, operation="add_member")
    for _ in range(2):
        with pytest.raises(RetryableWinRMError):
            fake.add_member(HOST, CREDS, ADMINS, bob)
    assert fake.add_member(HOST, CREDS, ADMINS, bob) is True
    fake.fail(RetryableWinRMError("10.0.0.5:5986", "resolve", "down"), operation="resolve", address="10.0.0.6")
    fake.resolve(HOST, CREDS, ADMINS, "CORP\\bob")  # another address: not hit
    with pytest.raises(RetryableWinRMError):
        fake.resolve(HostEndpoint("10.0.0.6"), CREDS, ADMINS, "CORP\\bob")
    fake.delay(0.05)
    started = time.monotonic()
    fake.is_member(HOST, CREDS, ADMINS, bob)
    assert time.monotonic() - started >= 0.05
    fake.clear_faults()


def test_sessions() -> None:
    fake = FakeWinRM()
    sid = fake.add_session("10.0.0.5", "CORP\\carol")
    fake.add_session("10.0.0.5", "dave")
    assert [s.session_id for s in fake.list_sessions(HOST, CREDS, "CORP\\carol")] == [sid]
    assert isinstance(fake.list_sessions(HOST, CREDS, "carol")[0], LogonSession)
    fake.logoff(HOST, CREDS, sid)
    fake.logoff(HOST, CREDS, sid)
    assert fake.list_sessions(HOST, CREDS, "CORP\\carol") == []


def test_value_objects() -> None:
    assert "hunter2-secret" not in repr(CREDS) and "hunter2-secret" not in str(CREDS)
    assert HOST.url == "https://10.0.0.5:5986/wsman" and HOST.key == "10.0.0.5:5986"
    assert HostEndpoint("::1", scheme="http", port=5985).url == "http://[::1]:5985/wsman"
    for bad in ({"scheme": "ftp"}, {"transport": "kerberos"}, {"port": 0}):
        with pytest.raises(ValueError):
            HostEndpoint("h", **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HostEndpoint("user@host")
