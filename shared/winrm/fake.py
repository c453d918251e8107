"""FakeWinRM: an in-memory WinRMPort for unit tests, with the same rules as the real adapter.

The model is the host's: accounts have SIDs, groups hold SIDs. A name resolves (case-insensitively)
to an account, which is created on first use with a deterministic SID:

- a bare name is a local account of that host: ``S-1-5-21-1000-1000-1000-<RID>``, RIDs from 1001 in
  the order the host first sees them;
- ``DOMAIN\\name`` is a domain account, the same on every host: ``S-1-5-21-2000-2000-<2000+n>-<RID>``
  (n: the n-th domain seen, from 0; RIDs from 1001 per domain);
- well-known principals resolve to their real SIDs, so callers can test refusals: ``Everyone``
  (S-1-1-0), ``Authenticated Users`` (S-1-5-11), ``SYSTEM`` (S-1-5-18), ``Interactive`` (S-1-5-4), all
  of class "" (Windows gives them none); ``DOMAIN\\Domain Admins|Users|Guests|Computers`` (-512..-515 of
  the domain, class "Group"); and the local groups themselves (class "Group");
- a name in ``unknown_principals``, or a name an account was renamed away from, does not resolve.

``rename(address, old, new)`` keeps the SID. Membership changes and checks are by SID only, exactly as
the port says. Names and SIDs are validated as MembershipClient does. Faults can be queued:
``fail(error, times=n, operation=...)`` raises ``error`` on the next n matching calls, ``delay(seconds)``
sleeps before each matching call. Every call is recorded in ``calls`` (operations: resolve, add_member,
remove_member, list_members, is_member, list_sessions, logoff). The one-run operations are modelled as
the steps their script takes, each step through the public method (so a subclass's hooks and the
queued faults see them): ``elevate_known`` is recorded as ``elevate_known``, ``resolve`` (the name's
translation and the look) then ``add_member`` (unless the name now maps to another SID); ``revoke`` as
``revoke``, ``remove_member``, ``list_sessions`` and ``logoff`` per session when asked.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .endpoint import (
    Credentials,
    EndedSession,
    GroupMember,
    HostEndpoint,
    KnownElevation,
    LogonSession,
    Resolved,
    Revocation,
)
from .errors import GroupNotFoundError, InvalidNameError, PrincipalNotFoundError, WinRMError
from .names import (
    validate_group,
    validate_group_sid,
    validate_member,
    validate_member_sid,
    validate_session_id,
)

_DEFAULT_GROUPS = {"S-1-5-32-544": "Administrators", "S-1-5-32-555": "Remote Desktop Users"}
LOCAL_SID_PREFIX = "S-1-5-21-1000-1000-1000"
FIRST_RID = 1001
_WELL_KNOWN = {  # lower-case name -> (SID, the name Windows reports, class)
    "everyone": ("S-1-1-0", "Everyone", ""),
    "authenticated users": ("S-1-5-11", "NT AUTHORITY\\Authenticated Users", ""),
    "system": ("S-1-5-18", "NT AUTHORITY\\SYSTEM", ""),
    "interactive": ("S-1-5-4", "NT AUTHORITY\\INTERACTIVE", ""),
}
_DOMAIN_GROUPS = {"domain admins": 512, "domain users": 513, "domain guests": 514, "domain computers": 515}


@dataclass
class _Fault:
    error: WinRMError
    times: int | None
    operation: str
    address: str | None


@dataclass
class _Account:
    sid: str
    name: str  # the current name, as first given (bare for a local account, DOMAIN\name for a domain one)
    object_class: str = "User"


@dataclass
class _Directory:
    """Accounts of one scope (a host's local accounts, or one domain): by lower-case name and by SID."""

    prefix: str
    by_name: dict[str, _Account] = field(default_factory=dict)
    by_sid: dict[str, _Account] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)  # names renamed away from: they no longer resolve
    next_rid: int = FIRST_RID

    def create(self, name: str) -> _Account:
        account = _Account(f"{self.prefix}-{self.next_rid}", name)
        self.next_rid += 1
        self.by_name[name.lower()] = account
        self.by_sid[account.sid] = account
        return account


@dataclass
class _Host:
    groups: dict[str, dict[str, None]]  # group SID -> member SIDs (insertion-ordered)
    local: _Directory = field(default_factory=lambda: _Directory(LOCAL_SID_PREFIX))
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
        self.group_names = {**_DEFAULT_GROUPS, **{k.upper(): v for k, v in (group_names or {}).items()}}
        self.calls: list[FakeCall] = []
        self._hosts: dict[str, _Host] = {}
        self._domains: dict[str, _Directory] = {}
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
        """The current names of the group's members (``group``: a SID or a group name)."""
        with self._lock:
            return {m.name for m in self._listing(address, self._group_sid(group))}

    def member_sids(self, address: str, group: str) -> set[str]:
        with self._lock:
            return set(self._host(address).groups.get(self._group_sid(group), {}))

    def sid_of(self, address: str, name: str) -> str:
        """The SID ``name`` resolves to on that host (creating the account as a resolve would);
        LookupError if it does not resolve."""
        with self._lock:
            account = self._lookup(address, name)
            if account is None:
                raise LookupError(f"{name} does not resolve on {address}")
            return account.sid

    def seed(self, address: str, group: str, member: str) -> None:
        """Put a standing membership in place: the account ``member`` (a name) in ``group``."""
        with self._lock:
            sid = self.sid_of(address, member)
            self._host(address).groups.setdefault(self._group_sid(group), {})[sid] = None

    def rename(self, address: str, old_name: str, new_name: str) -> None:
        """Rename an account (Rename-LocalUser, or in its domain): same SID, new name; the old name no
        longer resolves."""
        validate_member(new_name)
        with self._lock:
            account = self._lookup(address, old_name)
            if account is None or account.object_class != "User":
                raise LookupError(f"no account {old_name} on {address}")
            directory = self._directory(address, old_name)
            if old_name.rpartition("\\")[0].lower() != new_name.rpartition("\\")[0].lower():
                raise ValueError("a rename keeps the account's domain")
            if new_name.lower() != old_name.lower() and new_name.lower() in directory.by_name:
                raise ValueError(f"{new_name} exists already")
            del directory.by_name[old_name.lower()]
            directory.retired.add(old_name.lower())
            directory.retired.discard(new_name.lower())
            account.name = new_name
            directory.by_name[new_name.lower()] = account

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
    def resolve(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> Resolved:
        try:
            validate_group(group)
            validate_member(member)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "resolve", exc.detail) from None
        self._enter("resolve", host, group, member)
        with self._lock:
            group_sid = self._existing_group(host, "resolve", self._group_sid(group), group)
            account = self._lookup(host.address, member)
            if account is None:
                raise PrincipalNotFoundError(host.key, "resolve", f"Principal {member} was not found.")
            listed = account.sid in self._host(host.address).groups[group_sid]
            return Resolved(account.sid, account.name, account.object_class, group_sid, listed)

    def add_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        group_sid, member_sid = self._sids("add_member", host, group_sid, member_sid)
        with self._lock:
            members = self._host(host.address).groups[group_sid]
            if member_sid in members:
                return False
            if self._account_by_sid(host.address, member_sid) is None:
                raise PrincipalNotFoundError(host.key, "add_member", f"Principal {member_sid} was not found.")
            members[member_sid] = None
            return True

    def remove_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        group_sid, member_sid = self._sids("remove_member", host, group_sid, member_sid)
        with self._lock:
            members = self._host(host.address).groups[group_sid]
            if member_sid in members:
                del members[member_sid]
                return True
            if self._account_by_sid(host.address, member_sid) is None:
                # As on Windows: an unknown SID is PrincipalNotFound, never "not a member".
                raise PrincipalNotFoundError(host.key, "remove_member", f"Principal {member_sid} was not found.")
            return False

    def elevate_known(self, host: HostEndpoint, creds: Credentials, group_sid: str, member: str,
                      member_sid: str) -> KnownElevation:
        try:
            validate_member(member)
            validate_member_sid(member_sid)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "elevate_known", exc.detail) from None
        with self._lock:
            self.calls.append(FakeCall("elevate_known", host.address, (group_sid, member, member_sid)))
        looked = self.resolve(host, creds, group_sid, member)
        if looked.account_sid != member_sid.upper():
            return KnownElevation(sid_changed=looked.account_sid)
        changed = self.add_member(host, creds, group_sid, member_sid)
        return KnownElevation(changed=changed, was_member=looked.member)

    def revoke(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str, member: str,
               logoff: bool) -> Revocation:
        try:
            validate_member(member)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "revoke", exc.detail) from None
        with self._lock:
            self.calls.append(FakeCall("revoke", host.address, (group_sid, member_sid, member)))
        removed = self.remove_member(host, creds, group_sid, member_sid)
        ended: list[EndedSession] = []
        error = None
        try:
            for session in self.list_sessions(host, creds, member):
                action = "reported"
                if logoff:
                    self.logoff(host, creds, session.session_id)
                    action = "logged_off"
                ended.append(EndedSession(session, action))
        except WinRMError as exc:
            error = str(exc)
        return Revocation(removed=removed, sessions=tuple(ended), sessions_error=error)

    def list_members(self, host: HostEndpoint, creds: Credentials, group_sid: str) -> list[GroupMember]:
        try:
            group_sid = validate_group_sid(group_sid)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "list_members", exc.detail) from None
        self._enter("list_members", host, group_sid)
        with self._lock:
            return self._listing(host.address, self._existing_group(host, "list_members", group_sid, group_sid))

    def is_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        group_sid, member_sid = self._sids("is_member", host, group_sid, member_sid)
        with self._lock:
            return member_sid in self._host(host.address).groups[group_sid]

    def list_sessions(self, host: HostEndpoint, creds: Credentials, member: str) -> list[LogonSession]:
        try:
            validate_member(member)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "list_sessions", exc.detail) from None
        self._enter("list_sessions", host, member)
        sam = member.split("\\")[-1].lower()
        with self._lock:
            return [s for s in self._host(host.address).sessions.values() if s.account.lower() == sam]

    def logoff(self, host: HostEndpoint, creds: Credentials, session_id: str) -> None:
        try:
            validate_session_id(session_id)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "logoff", exc.detail) from None
        self._enter("logoff", host, session_id)
        with self._lock:
            self._host(host.address).sessions.pop(session_id, None)

    # -- internals -----------------------------------------------------------------------------------
    def _host(self, address: str) -> _Host:
        host = self._hosts.get(address)
        if host is None:
            host = self._hosts[address] = _Host(groups={sid: {} for sid in self.group_names})
        return host

    def _group_sid(self, group: str) -> str:
        if group.upper().startswith("S-1-"):
            return group.upper()
        for sid, name in self.group_names.items():
            if name.lower() == group.lower():
                return sid
        return group

    def _existing_group(self, host: HostEndpoint, operation: str, group_sid: str, given: str) -> str:
        if group_sid not in self._host(host.address).groups:
            raise GroupNotFoundError(host.key, operation, f"Group {given} was not found.")
        return group_sid

    def _domain(self, name: str) -> _Directory:
        key = name.upper()
        directory = self._domains.get(key)
        if directory is None:
            directory = self._domains[key] = _Directory(f"S-1-5-21-2000-2000-{2000 + len(self._domains)}")
        return directory

    def _directory(self, address: str, name: str) -> _Directory:
        if "\\" in name:
            return self._domain(name.split("\\", 1)[0])
        return self._host(address).local

    def _lookup(self, address: str, name: str) -> _Account | None:
        """The account ``name`` resolves to (created on first use), or None if it does not resolve."""
        if name.lower() in self.unknown_principals:
            return None
        domain, _, sam = name.rpartition("\\")
        special = self._special(domain, sam)
        if special is not None:
            return special
        directory = self._directory(address, name)
        account = directory.by_name.get(name.lower())
        if account is None and name.lower() not in directory.retired:
            account = directory.create(name)
        return account

    def _special(self, domain: str, sam: str) -> _Account | None:
        if not domain and sam.lower() in _WELL_KNOWN:
            sid, shown, cls = _WELL_KNOWN[sam.lower()]
            return _Account(sid, shown, cls)
        if domain and sam.lower() in _DOMAIN_GROUPS:
            prefix = self._domain(domain).prefix
            return _Account(f"{prefix}-{_DOMAIN_GROUPS[sam.lower()]}", f"{domain.upper()}\\{sam}", "Group")
        if domain.lower() in ("", "builtin"):
            for sid, group_name in self.group_names.items():
                if group_name.lower() == sam.lower():
                    return _Account(sid, f"BUILTIN\\{group_name}", "Group")
        return None

    def _account_by_sid(self, address: str, sid: str) -> _Account | None:
        account = self._host(address).local.by_sid.get(sid)
        if account is not None:
            return account
        for directory in self._domains.values():
            if sid in directory.by_sid:
                return directory.by_sid[sid]
        return None

    def _listing(self, address: str, group_sid: str) -> list[GroupMember]:
        out = []
        for sid in self._host(address).groups.get(group_sid, {}):
            account = self._account_by_sid(address, sid)
            out.append(GroupMember(sid, account.name, account.object_class) if account else GroupMember(sid, sid, ""))
        return out

    def _sids(self, operation: str, host: HostEndpoint, group_sid: str, member_sid: str) -> tuple[str, str]:
        try:
            group_sid = validate_group_sid(group_sid)
            member_sid = validate_member_sid(member_sid)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, operation, exc.detail) from None
        self._enter(operation, host, group_sid, member_sid)
        with self._lock:
            return self._existing_group(host, operation, group_sid, group_sid), member_sid

    def _enter(self, operation: str, host: HostEndpoint, *args: str) -> None:
        self._inject(operation, host)
        with self._lock:
            self.calls.append(FakeCall(operation, host.address, args))

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
