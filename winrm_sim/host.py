"""The state of one simulated Windows host: accounts with SIDs, local groups of SIDs, logon sessions.

Accounts: every principal has a SID. Local accounts get ``<machine SID>-<RID>`` (the machine SID is
derived from the computer name, RIDs from 1001 in the order the host first sees the names); a domain
account ``DOMAIN\\name`` gets ``<domain SID>-<RID>`` with both derived from the names, so every
simulated host agrees on a domain account's SID. Well-known principals have their real SIDs:
Everyone S-1-1-0, NT AUTHORITY\\Authenticated Users S-1-5-11, SYSTEM S-1-5-18, INTERACTIVE S-1-5-4
(no object class), the BUILTIN groups (S-1-5-32-*) and a domain's Domain Admins/Users/Guests/Computers
(-512..-515), class "Group". A valid account name that is not known yet resolves to a new account
(unless ``known_principals`` restricts them, or it is in ``unknown_principals``); ``rename_account``
keeps the SID and the old name stops resolving.

Methods raise :class:`PSError` with the FullyQualifiedErrorId and English message that the
Microsoft.PowerShell.LocalAccounts cmdlets (Windows PowerShell 5.1) produce, so the command layer
can answer exactly as Windows would. Every membership change is appended to ``changes``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

ADMINISTRATORS = "S-1-5-32-544"
REMOTE_DESKTOP_USERS = "S-1-5-32-555"
DEFAULT_GROUPS = {ADMINISTRATORS: "Administrators", REMOTE_DESKTOP_USERS: "Remote Desktop Users"}
FIRST_RID = 1001

# Characters Windows itself refuses in an account name (the simulator's notion of "cannot resolve").
_WINDOWS_FORBIDDEN = set('"/\\[]:;|=,+*?<>')
_SID_RE = re.compile(r"^S-1-[0-9]{1,13}(?:-[0-9]{1,10}){0,15}$", re.IGNORECASE)
# (SID, domain, name) of the well-known principals the simulator knows; Windows gives them no class.
_WELL_KNOWN = (
    ("S-1-1-0", "", "Everyone"),
    ("S-1-5-11", "NT AUTHORITY", "Authenticated Users"),
    ("S-1-5-18", "NT AUTHORITY", "SYSTEM"),
    ("S-1-5-4", "NT AUTHORITY", "INTERACTIVE"),
)
_DOMAIN_GROUPS = {"domain admins": 512, "domain users": 513, "domain guests": 514, "domain computers": 515}


class PSError(Exception):
    """A PowerShell error record: FullyQualifiedErrorId plus message."""

    def __init__(self, error_id: str, message: str) -> None:
        super().__init__(message)
        self.error_id = error_id
        self.message = message


@dataclass
class Account:
    sid: str
    domain: str  # the computer name for a local account, "" for Everyone
    name: str
    object_class: str = "User"  # "User", "Group" or "" (a well-known principal)

    @property
    def full_name(self) -> str:
        """As NTAccount.Translate and Get-LocalGroupMember show it: ``DOMAIN\\name``."""
        return f"{self.domain}\\{self.name}" if self.domain else self.name


@dataclass
class Group:
    sid: str
    name: str
    members: dict[str, None] = field(default_factory=dict)  # member SIDs, in the order they were added


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
    op: str  # "add" | "remove" | "logoff" | "rename"
    group_sid: str
    member: str  # the account's name at the time
    member_sid: str = ""


def _cmdlet(verb: str) -> str:
    return f"Microsoft.PowerShell.Commands.{verb}Command"


def _numbers(seed: str, count: int) -> list[int]:
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return [int.from_bytes(digest[4 * i:4 * i + 4], "big") for i in range(count)]


def machine_sid(computer_name: str) -> str:
    """The (simulated) machine SID of a computer: deterministic per computer name."""
    a, b, c = _numbers(f"machine:{computer_name.upper()}", 3)
    return f"S-1-5-21-{a}-{b}-{c}"


def domain_sid(domain: str) -> str:
    """The (simulated) SID of a domain: deterministic per domain name."""
    a, b, c = _numbers(f"domain:{domain.upper()}", 3)
    return f"S-1-5-21-{a}-{b}-{c}"


def is_sid(value: str) -> bool:
    return bool(_SID_RE.fullmatch(value))


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
        self.machine_sid = machine_sid(computer_name)
        self.lock = threading.RLock()
        names = {**DEFAULT_GROUPS, **{k.upper(): v for k, v in (group_names or {}).items()}}
        self.groups = {sid: Group(sid, name) for sid, name in names.items()}
        self.known_principals = {p.lower() for p in known_principals} if known_principals is not None else None
        self.unknown_principals = {p.lower() for p in (unknown_principals or set())}
        self.sessions: dict[int, LogonSession] = {}
        self.changes: list[Change] = []
        self.service_is_admin = True
        self.accounts: dict[str, Account] = {}  # by SID
        self._by_name: dict[str, str] = {}  # lower-case full name -> SID
        self._retired: set[str] = set()  # lower-case full names renamed away from: they do not resolve
        self._next_rid = FIRST_RID
        self._next_session = 2
        for sid, domain, name in _WELL_KNOWN:
            self._register(Account(sid, domain, name, ""))
        for group in self.groups.values():
            self._register(Account(group.sid, "BUILTIN", group.name, "Group"))

    # -- names and SIDs ------------------------------------------------------------------------------
    def _register(self, account: Account) -> Account:
        self.accounts[account.sid] = account
        self._by_name[account.full_name.lower()] = account.sid
        return account

    def canonical(self, name: str) -> str:
        """What Windows shows for a local account name: bare names become ``COMPUTER\\name``."""
        if "\\" not in name:
            return f"{self.computer_name}\\{name}"
        domain, _, sam = name.partition("\\")
        return f"{self.computer_name}\\{sam}" if domain == "." else name

    def _valid(self, name: str) -> bool:
        """Whether Windows could have an account of that name (and the test setup lets it resolve)."""
        if name.count("\\") > 1 or any(c in _WINDOWS_FORBIDDEN for c in name.split("\\")[-1]):
            return False
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            return False
        sam = name.split("\\")[-1]
        if not sam or len(sam) > 20 or not sam.strip(". ") or (name.startswith("\\")):
            return False
        lowered = {name.lower(), self.canonical(name).lower(), sam.lower()}
        if lowered & self.unknown_principals:
            return False
        return self.known_principals is None or bool(lowered & self.known_principals)

    def lookup(self, name: str | None) -> Account | None:
        """NTAccount(name).Translate(SecurityIdentifier): the account, created on first use; None when
        the name does not map."""
        if not name:
            return None
        with self.lock:
            sam = name.split("\\")[-1]
            if {name.lower(), sam.lower(), self.canonical(name).lower()} & self.unknown_principals:
                return None
            if "\\" not in name:  # well-known and BUILTIN names first, as LookupAccountName does
                for account in self.accounts.values():
                    if account.domain in ("", "NT AUTHORITY", "BUILTIN") and account.name.lower() == sam.lower():
                        return account
            full = self.canonical(name)
            domain = full.split("\\")[0]
            known = self._by_name.get(full.lower())
            if known is not None:
                return self.accounts[known]
            if full.lower() in self._retired or domain.upper() in ("NT AUTHORITY", "BUILTIN"):
                return None
            if not self._valid(name):
                return None
            if domain.lower() == self.computer_name.lower():
                sid = f"{self.machine_sid}-{self._next_rid}"
                self._next_rid += 1
                return self._register(Account(sid, self.computer_name, sam))
            return self._register(self._domain_account(domain.upper(), sam))

    def _domain_account(self, domain: str, sam: str) -> Account:
        prefix = domain_sid(domain)
        if sam.lower() in _DOMAIN_GROUPS:
            return Account(f"{prefix}-{_DOMAIN_GROUPS[sam.lower()]}", domain, sam, "Group")
        rid = 1100 + _numbers(f"account:{domain}\\{sam.lower()}", 1)[0] % 100_000_000
        while f"{prefix}-{rid}" in self.accounts:
            rid += 1
        return Account(f"{prefix}-{rid}", domain, sam)

    def by_sid(self, sid: str) -> Account | None:
        with self.lock:
            return self.accounts.get(sid.upper())

    def sid_of(self, name: str) -> str:
        account = self.lookup(name)
        if account is None:
            raise ValueError(f"{name} does not resolve on {self.computer_name}")
        return account.sid

    def rename_account(self, old_name: str, new_name: str) -> Account:
        """Rename-LocalUser (or a rename in the domain): the SID stays, the old name stops resolving."""
        with self.lock:
            account = self.lookup(old_name)
            if account is None or account.object_class != "User":
                raise PSError(f"UserNotFound,{_cmdlet('RenameLocalUser')}", f"User {old_name} was not found.")
            new_sam = new_name.split("\\")[-1]
            if "\\" in new_name and self.canonical(new_name).split("\\")[0].lower() != account.domain.lower():
                raise ValueError("a rename keeps the account's domain")
            if not self._valid(new_sam):
                raise PSError(f"InvalidName,{_cmdlet('RenameLocalUser')}", f"The name {new_name} is invalid.")
            new_full = f"{account.domain}\\{new_sam}".lower()
            if new_full in self._by_name and self._by_name[new_full] != account.sid:
                raise PSError(f"NameInUse,{_cmdlet('RenameLocalUser')}", f"The name {new_sam} is already in use.")
            del self._by_name[account.full_name.lower()]
            self._retired.add(account.full_name.lower())
            old_full = account.full_name
            account.name = new_sam
            self._retired.discard(new_full)
            self._by_name[new_full] = account.sid
            self.changes.append(Change(time.time(), "rename", "", f"{old_full} -> {account.full_name}", account.sid))
            return account

    # -- groups --------------------------------------------------------------------------------------
    def find_group(self, kind: str | None, value: str | None) -> Group:
        with self.lock:
            if kind == "SID" and value:
                if not is_sid(value):
                    raise PSError(
                        "ParameterArgumentTransformationError,Microsoft.PowerShell.Commands.GetLocalGroupCommand",
                        f"Cannot process argument transformation on parameter 'SID'. Cannot convert value "
                        f'"{value}" to type "System.Security.Principal.SecurityIdentifier".')
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

    def members_of(self, group: Group) -> list[Account]:
        """Every member, sorted by name; a SID no account has any more (orphaned) under the SID itself. This
        is what ADSI's WinNT provider lists (``$group.psbase.Invoke('Members')``)."""
        with self.lock:
            out = [self.accounts.get(sid) or Account(sid, "", sid, "") for sid in group.members]
            return sorted(out, key=lambda a: a.full_name.lower())

    def list_members(self, group: Group) -> list[Account]:
        """Get-LocalGroupMember -Group, as Windows PowerShell 5.1 answers: the members, unless one of them is an
        orphaned SID, on which the cmdlet's sort fails (PowerShell/PowerShell issues 2996, 21617)."""
        with self.lock:
            if any(sid not in self.accounts for sid in group.members):
                raise PSError(f"An unspecified error occurred.,{_cmdlet('GetLocalGroupMember')}",
                              "Failed to compare two elements in the array.")
            return self.members_of(group)

    def add_member_sid(self, group: Group, sid: str) -> Account:
        """Add-LocalGroupMember -Group g -Member <LocalPrincipal with a SID>."""
        with self.lock:
            if not self.service_is_admin:
                raise PSError(f"AccessDenied,{_cmdlet('AddLocalGroupMember')}", "Access denied.")
            account = self.accounts.get(sid.upper())
            if account is None:
                raise PSError(f"PrincipalNotFound,{_cmdlet('AddLocalGroupMember')}", f"Principal {sid} was not found.")
            if account.sid in group.members:
                raise PSError(
                    f"MemberExists,{_cmdlet('AddLocalGroupMember')}",
                    f"{account.full_name} is already a member of group {group.name}.",
                )
            group.members[account.sid] = None
            self.changes.append(Change(time.time(), "add", group.sid, account.full_name, account.sid))
            return account

    def remove_member_sid(self, group: Group, sid: str) -> None:
        """Remove-LocalGroupMember by SID: a listed SID is removed even if no account has it any more."""
        with self.lock:
            if not self.service_is_admin:
                raise PSError(f"AccessDenied,{_cmdlet('RemoveLocalGroupMember')}", "Access denied.")
            sid = sid.upper()
            account = self.accounts.get(sid)
            if sid not in group.members:
                if account is None:
                    raise PSError(f"PrincipalNotFound,{_cmdlet('RemoveLocalGroupMember')}",
                                  f"Principal {sid} was not found.")
                raise PSError(
                    f"MemberNotFound,{_cmdlet('RemoveLocalGroupMember')}",
                    f"Member {account.full_name} was not found in group {group.name}.",
                )
            del group.members[sid]
            self.changes.append(Change(time.time(), "remove", group.sid, account.full_name if account else sid, sid))

    def _principal(self, name: str | None, verb: str) -> Account:
        if name is None:
            raise PSError(
                f"ParameterArgumentValidationErrorNullNotAllowed,{_cmdlet(verb)}",
                "Cannot validate argument on parameter 'Member'. The argument is null or empty.",
            )
        account = self.lookup(name)
        if account is None:
            raise PSError(f"PrincipalNotFound,{_cmdlet(verb)}", f"Principal {name} was not found.")
        return account

    def add_member(self, group: Group, name: str | None) -> None:
        """By name (net localgroup, Add-LocalGroupMember -Member NAME): the name is looked up first."""
        with self.lock:
            if not self.service_is_admin:
                raise PSError(f"AccessDenied,{_cmdlet('AddLocalGroupMember')}", "Access denied.")
            self.add_member_sid(group, self._principal(name, "AddLocalGroupMember").sid)

    def remove_member(self, group: Group, name: str | None) -> None:
        with self.lock:
            if not self.service_is_admin:
                raise PSError(f"AccessDenied,{_cmdlet('RemoveLocalGroupMember')}", "Access denied.")
            self.remove_member_sid(group, self._principal(name, "RemoveLocalGroupMember").sid)

    def strip_machine_name(self, name: str) -> str:
        """LocalAccounts' Sam.StripMachineName: drop a leading ``COMPUTER\\`` (this computer only)."""
        domain, sep, sam = name.partition("\\")
        return sam if sep and domain.lower() == self.computer_name.lower() else name

    def check_member(self, group: Group, member: str | None) -> list[Account]:
        """Get-LocalGroupMember -Group g -Member X, as LocalAccounts implements it: X is a wildcard
        pattern, a SID, or a name compared with each member's name *with this computer's prefix
        stripped* (X itself is not stripped, so ``COMPUTER\\name`` never matches a local member). No
        match writes PrincipalNotFound (not MemberNotFound), whether or not X exists."""
        if not member:
            raise PSError(
                f"ParameterArgumentValidationErrorEmptyStringNotAllowed,{_cmdlet('GetLocalGroupMember')}",
                "Cannot validate argument on parameter 'Member'. The argument is null or empty.",
            )
        with self.lock:
            members = self.list_members(group)
            if any(c in member for c in "*?["):
                found = [m for m in members
                         if fnmatch.fnmatchcase(self.strip_machine_name(m.full_name).lower(), member.lower())]
            elif is_sid(member):
                found = [m for m in members if m.sid == member.upper()][:1]
            else:
                found = [m for m in members
                         if self.strip_machine_name(m.full_name).lower() == member.lower()][:1]
            if not found and not any(c in member for c in "*?["):
                raise PSError(f"PrincipalNotFound,{_cmdlet('GetLocalGroupMember')}",
                              f"Principal {member} was not found.")
            return found

    # -- test controls -------------------------------------------------------------------------------
    def seed_member(self, group_sid: str, member: str) -> str:
        """Put a member in place without going through WinRM (a standing membership someone else made)."""
        with self.lock:
            account = self.lookup(member)
            if account is None and is_sid(member):  # an orphaned SID: an account deleted from its domain
                self.groups[group_sid.upper()].members[member.upper()] = None
                return member.upper()
            if account is None:
                raise ValueError(f"{member} does not resolve on {self.computer_name}")
            self.groups[group_sid.upper()].members[account.sid] = None
            return account.full_name

    def unseed_member(self, group_sid: str, member: str) -> None:
        with self.lock:
            account = self.lookup(member) if not is_sid(member) else self.by_sid(member)
            sid = account.sid if account else member.upper()
            self.groups[group_sid.upper()].members.pop(sid, None)

    def members(self, group_sid: str) -> set[str]:
        """The current names of the group's members."""
        with self.lock:
            return {a.full_name for a in self.members_of(self.groups[group_sid.upper()])}

    def member_sids(self, group_sid: str) -> set[str]:
        with self.lock:
            return set(self.groups[group_sid.upper()].members)

    def group_members(self, group_sid: str) -> list[dict[str, str]]:
        """The group's members with SIDs: ``[{"sid", "name", "class"}]``."""
        with self.lock:
            return [{"sid": a.sid, "name": a.full_name, "class": a.object_class}
                    for a in self.members_of(self.groups[group_sid.upper()])]

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
                "machine_sid": self.machine_sid,
                "groups": {
                    g.sid: {"name": g.name, "members": sorted(self.members(g.sid)),
                            "member_sids": self.group_members(g.sid)}
                    for g in self.groups.values()
                },
                "sessions": [
                    {"id": str(s.session_id), "user": s.user, "state": s.state, "logon_time": s.logon_time}
                    for s in self.sessions.values()
                ],
            }
