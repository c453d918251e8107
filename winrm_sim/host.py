"""The state of one simulated Windows host: local groups by SID, resolvable principals, logon sessions.

Methods raise :class:`PSError` with the FullyQualifiedErrorId and English message that the
Microsoft.PowerShell.LocalAccounts cmdlets (Windows PowerShell 5.1) produce, so the command layer
can answer exactly as Windows would. Every membership change is appended to ``changes``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

ADMINISTRATORS = "S-1-5-32-544"
REMOTE_DESKTOP_USERS = "S-1-5-32-555"
DEFAULT_GROUPS = {ADMINISTRATORS: "Administrators", REMOTE_DESKTOP_USERS: "Remote Desktop Users"}

# Characters Windows itself refuses in an account name (the simulator's notion of "cannot resolve").
_WINDOWS_FORBIDDEN = set('"/\\[]:;|=,+*?<>')


class PSError(Exception):
    """A PowerShell error record: FullyQualifiedErrorId plus message."""

    def __init__(self, error_id: str, message: str) -> None:
        super().__init__(message)
        self.error_id = error_id
        self.message = message


@dataclass
class Group:
    sid: str
    name: str
    members: dict[str, str] = field(default_factory=dict)  # lower-cased canonical name -> canonical name


@dataclass
class LogonSession:
    session_id: int
    user: str
    state: str = "Active"
    session_name: str = "rdp-tcp#0"
    logon_time: str = field(default_factory=lambda: datetime.now().strftime("%m/%d/%Y %I:%M %p").lstrip("0"))


@dataclass(frozen=True)
class Change:
    at: float
    op: str  # "add" | "remove" | "logoff"
    group_sid: str
    member: str


def _cmdlet(verb: str) -> str:
    return f"Microsoft.PowerShell.Commands.{verb}Command"


class WindowsHost:
    """Thread-safe host model. ``known_principals=None`` means every valid account name resolves."""

    def __init__(
        self,
        computer_name: str = "WIN-SIM01",
        group_names: dict[str, str] | None = None,
        known_principals: set[str] | None = None,
        unknown_principals: set[str] | None = None,
    ) -> None:
        self.computer_name = computer_name
        self.lock = threading.RLock()
        names = {**DEFAULT_GROUPS, **(group_names or {})}
        self.groups = {sid: Group(sid, name) for sid, name in names.items()}
        self.known_principals = {p.lower() for p in known_principals} if known_principals is not None else None
        self.unknown_principals = {p.lower() for p in (unknown_principals or set())}
        self.sessions: dict[int, LogonSession] = {}
        self.changes: list[Change] = []
        self.service_is_admin = True
        self._next_session = 2

    def canonical(self, name: str) -> str:
        """What Windows shows for a principal: bare names become ``COMPUTER\\name``."""
        if "\\" not in name:
            return f"{self.computer_name}\\{name}"
        domain, _, sam = name.partition("\\")
        return f"{self.computer_name}\\{sam}" if domain == "." else name

    def resolve(self, name: str | None) -> str | None:
        if not name:
            return None
        if name.count("\\") > 1 or any(c in _WINDOWS_FORBIDDEN for c in name.split("\\")[-1]):
            return None
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            return None
        sam = name.split("\\")[-1]
        if not sam or len(sam) > 20 or not sam.strip(". "):
            return None
        canonical = self.canonical(name)
        lowered = {name.lower(), canonical.lower(), sam.lower()}
        if lowered & self.unknown_principals:
            return None
        if self.known_principals is not None and not lowered & self.known_principals:
            return None
        return canonical

    def find_group(self, kind: str | None, value: str | None) -> Group:
        with self.lock:
            if kind == "SID" and value:
                group = self.groups.get(value.upper())
            elif value:
                group = next((g for g in self.groups.values() if g.name.lower() == value.lower()), None)
            else:
                raise PSError(
                    f"ParameterArgumentValidationErrorNullNotAllowed,{_cmdlet('GetLocalGroup')}",
                    "Cannot validate argument on parameter 'Name'. The argument is null. "
                    "Provide a valid value for the argument, and then try running the command again.",
                )
            if group is None:
                raise PSError(f"GroupNotFound,{_cmdlet('GetLocalGroup')}", f"Group {value} was not found.")
            return group

    def _principal(self, name: str | None, verb: str) -> str:
        if name is None:
            raise PSError(
                f"ParameterArgumentValidationErrorNullNotAllowed,{_cmdlet(verb)}",
                "Cannot validate argument on parameter 'Member'. The argument is null or empty.",
            )
        canonical = self.resolve(name)
        if canonical is None:
            raise PSError(f"PrincipalNotFound,{_cmdlet(verb)}", f"Principal {name} was not found.")
        return canonical

    def add_member(self, group: Group, name: str | None) -> None:
        with self.lock:
            if not self.service_is_admin:
                raise PSError(f"AccessDenied,{_cmdlet('AddLocalGroupMember')}", "Access denied.")
            member = self._principal(name, "AddLocalGroupMember")
            if member.lower() in group.members:
                raise PSError(
                    f"MemberExists,{_cmdlet('AddLocalGroupMember')}",
                    f"{member} is already a member of group {group.name}.",
                )
            group.members[member.lower()] = member
            self.changes.append(Change(time.time(), "add", group.sid, member))

    def remove_member(self, group: Group, name: str | None) -> None:
        with self.lock:
            if not self.service_is_admin:
                raise PSError(f"AccessDenied,{_cmdlet('RemoveLocalGroupMember')}", "Access denied.")
            member = self._principal(name, "RemoveLocalGroupMember")
            if member.lower() not in group.members:
                raise PSError(
                    f"MemberNotFound,{_cmdlet('RemoveLocalGroupMember')}",
                    f"Member {member} was not found in group {group.name}.",
                )
            del group.members[member.lower()]
            self.changes.append(Change(time.time(), "remove", group.sid, member))

    def check_member(self, group: Group, name: str | None) -> None:
        with self.lock:
            member = self._principal(name, "GetLocalGroupMember")
            if member.lower() not in group.members:
                raise PSError(
                    f"MemberNotFound,{_cmdlet('GetLocalGroupMember')}",
                    f"Member {member} was not found in group {group.name}.",
                )

    def seed_member(self, group_sid: str, member: str) -> str:
        """Put a member in place without going through WinRM (a standing membership someone else made)."""
        with self.lock:
            canonical = self.canonical(member)
            self.groups[group_sid.upper()].members[canonical.lower()] = canonical
            return canonical

    def unseed_member(self, group_sid: str, member: str) -> None:
        with self.lock:
            self.groups[group_sid.upper()].members.pop(self.canonical(member).lower(), None)

    def members(self, group_sid: str) -> set[str]:
        with self.lock:
            return set(self.groups[group_sid.upper()].members.values())

    def add_session(self, account: str, state: str = "Active") -> int:
        with self.lock:
            sid = self._next_session
            self._next_session += 1
            name = "" if state == "Disc" else f"rdp-tcp#{sid}"
            self.sessions[sid] = LogonSession(sid, account.split("\\")[-1], state, name)
            return sid

    def logoff(self, session_id: int) -> bool:
        with self.lock:
            session = self.sessions.pop(session_id, None)
            if session is not None:
                self.changes.append(Change(time.time(), "logoff", "", session.user))
            return session is not None

    def quser(self) -> str:
        """``quser.exe`` output with its fixed-width columns."""
        with self.lock:
            lines = [" USERNAME              SESSIONNAME        ID  STATE   IDLE TIME  LOGON TIME"]
            for s in sorted(self.sessions.values(), key=lambda s: s.session_id):
                lines.append(
                    f" {s.user:<22}{s.session_name:<17}{s.session_id:>4}  {s.state:<6}  {'.':>9}  {s.logon_time}"
                )
            return "\r\n".join(lines) + "\r\n"

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return {
                "computer_name": self.computer_name,
                "groups": {
                    g.sid: {"name": g.name, "members": sorted(g.members.values())} for g in self.groups.values()
                },
                "sessions": [
                    {"id": str(s.session_id), "user": s.user, "state": s.state, "logon_time": s.logon_time}
                    for s in self.sessions.values()
                ],
            }
