"""FakeWinRM follows the port's rules, and the value objects keep the password out of sight."""

from __future__ import annotations

import time

import pytest

from shared.winrm import (
    Credentials,
    FakeWinRM,
    HostEndpoint,
    InvalidNameError,
    LogonSession,
    RetryableWinRMError,
    WinRMPort,
)
from shared.winrm.errors import GroupNotFoundError, PrincipalNotFoundError

HOST = HostEndpoint("10.0.0.5")
CREDS = Credentials("CORP\\svc-jit", "hunter2-secret")
ADMINS = "S-1-5-32-544"


def test_is_a_winrm_port() -> None:
    port: WinRMPort = FakeWinRM()
    assert port.is_member(HOST, CREDS, ADMINS, "CORP\\bob") is False


def test_membership_rules() -> None:
    fake = FakeWinRM(unknown_principals={"CORP\\ghost"})
    assert fake.add_member(HOST, CREDS, ADMINS, "CORP\\bob") is True
    assert fake.add_member(HOST, CREDS, "administrators", "corp\\BOB") is False
    assert fake.members("10.0.0.5", ADMINS) == {"CORP\\bob"}
    assert fake.members("10.0.0.6", ADMINS) == set()
    assert fake.remove_member(HOST, CREDS, ADMINS, "CORP\\bob") is True
    assert fake.remove_member(HOST, CREDS, ADMINS, "CORP\\bob") is False
    with pytest.raises(PrincipalNotFoundError):
        fake.add_member(HOST, CREDS, ADMINS, "CORP\\ghost")
    assert fake.remove_member(HOST, CREDS, ADMINS, "CORP\\ghost") is False
    with pytest.raises(GroupNotFoundError):
        fake.add_member(HOST, CREDS, "S-1-5-32-999", "CORP\\bob")
    with pytest.raises(InvalidNameError):
        fake.add_member(HOST, CREDS, ADMINS, "bob;calc")
    assert [c.operation for c in fake.calls][:2] == ["add_member", "add_member"]


def test_faults_and_delay() -> None:
    fake = FakeWinRM()
    fake.fail(RetryableWinRMError("10.0.0.5:5986", "add_member", "down"), times=2, operation="add_member")
    for _ in range(2):
        with pytest.raises(RetryableWinRMError):
            fake.add_member(HOST, CREDS, ADMINS, "CORP\\bob")
    assert fake.add_member(HOST, CREDS, ADMINS, "CORP\\bob") is True
    fake.delay(0.05)
    started = time.monotonic()
    fake.is_member(HOST, CREDS, ADMINS, "CORP\\bob")
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
