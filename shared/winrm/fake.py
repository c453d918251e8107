"""FakeWinRM: an in-memory WinRMPort for unit tests, with the same rules as the real adapter.

Names are validated exactly as MembershipClient does, membership is case-insensitive, "already a
member" / "not a member" are success, and faults can be queued: ``fail(error, times=n)`` raises
``error`` on the next n matching calls, ``delay(seconds)`` sleeps before each matching call.
Every call is recorded in ``calls``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .endpoint import Credentials, HostEndpoint, LogonSession
from .errors import GroupNotFoundError, InvalidNameError, PrincipalNotFoundError, WinRMError
from .names import validate_group, validate_member, validate_session_id

_DEFAULT_GROUPS = {"S-1-5-32-544": "Administrators", "S-1-5-32-555": "Remote Desktop Users"}


@dataclass
class _Fault:
    error: WinRMError
    times: int | None
    operation: str
    address: str | None


@dataclass
class _Host:
    groups: dict[str, dict[str, str]] = field(default_factory=lambda: {sid: {} for sid in _DEFAULT_GROUPS})
    sessions: dict[str, LogonSession] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeCall:
    operation: str
    address: str
    args: tuple[str, ...]


class FakeWinRM:
    def __init__(self, *, unknown_principals: set[str] | None = None,
                 group_names: dict[str, str] | None = None) -> None:
        self.unknown_principals = {p.lower() for p in (unknown_principals or set())}
        self.group_names = {**_DEFAULT_GROUPS, **(group_names or {})}
        self.calls: list[FakeCall] = []
        self._hosts: dict[str, _Host] = {}
        self._faults: list[_Fault] = []
        self._delays: dict[str, float] = {}
        self._lock = threading.RLock()
        self._next_session = 2

    # -- test controls -------------------------------------------------------------------------------
    def fail(self, error: WinRMError, *, times: int | None = 1, operation: str = "*",
             address: str | None = None) -> None:
        """Raise ``error`` on the next ``times`` calls of ``operation`` (None: until clear_faults())."""
        with self._lock:
            self._faults.append(_Fault(error, times, operation, address))

    def delay(self, seconds: float, operation: str = "*") -> None:
        with self._lock:
            self._delays[operation] = seconds

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    def members(self, address: str, group: str) -> set[str]:
        with self._lock:
            return set(self._host(address).groups.get(self._sid(address, group), {}).values())

    def seed(self, address: str, group: str, member: str) -> None:
        with self._lock:
            self._host(address).groups.setdefault(self._sid(address, group), {})[member.lower()] = member

    def add_session(self, address: str, account: str, state: str = "Active") -> str:
        with self._lock:
            sid = str(self._next_session)
            self._next_session += 1
            name = account.split("\\")[-1]
            self._host(address).sessions[sid] = LogonSession(sid, name, state, "1/1/2025 9:00 AM")
            return sid

    def sessions(self, address: str) -> list[LogonSession]:
        with self._lock:
            return list(self._host(address).sessions.values())

    # -- the port ------------------------------------------------------------------------------------
    def add_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        sid = self._enter("add_member", host, group, member)
        with self._lock:
            if member.lower() in self.unknown_principals:
                raise PrincipalNotFoundError(host.key, "add_member", f"Principal {member} was not found.")
            members = self._host(host.address).groups[sid]
            if member.lower() in members:
                return False
            members[member.lower()] = member
            return True

    def remove_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        sid = self._enter("remove_member", host, group, member)
        with self._lock:
            return self._host(host.address).groups[sid].pop(member.lower(), None) is not None

    def is_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        sid = self._enter("is_member", host, group, member)
        with self._lock:
            return member.lower() in self._host(host.address).groups[sid]

    def list_sessions(self, host: HostEndpoint, creds: Credentials, member: str) -> list[LogonSession]:
        self._enter("list_sessions", host, None, member)
        sam = member.split("\\")[-1].lower()
        with self._lock:
            return [s for s in self._host(host.address).sessions.values() if s.account.lower() == sam]

    def logoff(self, host: HostEndpoint, creds: Credentials, session_id: str) -> None:
        try:
            validate_session_id(session_id)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "logoff", exc.detail) from None
        self._inject("logoff", host)
        with self._lock:
            self.calls.append(FakeCall("logoff", host.address, (session_id,)))
            self._host(host.address).sessions.pop(session_id, None)

    # -- internals -----------------------------------------------------------------------------------
    def _host(self, address: str) -> _Host:
        return self._hosts.setdefault(address, _Host())

    def _sid(self, address: str, group: str) -> str:
        if group.upper().startswith("S-1-"):
            return group.upper()
        for sid, name in self.group_names.items():
            if name.lower() == group.lower():
                return sid
        return group

    def _enter(self, operation: str, host: HostEndpoint, group: str | None, member: str) -> str:
        try:
            if group is not None:
                validate_group(group)
            validate_member(member)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, operation, exc.detail) from None
        self._inject(operation, host)
        with self._lock:
            self.calls.append(FakeCall(operation, host.address, tuple(x for x in (group, member) if x)))
            if group is None:
                return ""
            sid = self._sid(host.address, group)
            if sid not in self._host(host.address).groups:
                raise GroupNotFoundError(host.key, operation, f"Group {group} was not found.")
            return sid

    def _inject(self, operation: str, host: HostEndpoint) -> None:
        with self._lock:
            seconds = self._delays.get(operation, self._delays.get("*", 0.0))
        if seconds:
            time.sleep(seconds)
        with self._lock:
            for fault in self._faults:
                if fault.operation not in ("*", operation) or fault.address not in (None, host.address):
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                raise fault.error
