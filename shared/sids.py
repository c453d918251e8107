"""Security identifiers: their shape, and which principals may never be elevated.

Only an account may be a grant's member: a user SID (`S-1-5-21-<domain or machine>-<RID>`) whose
host-reported class is "User". Groups and well-known principals (Everyone S-1-1-0, Authenticated Users
S-1-5-11, the BUILTIN and NT AUTHORITY SIDs, a domain's Domain Users -513 and the other well-known
domain groups) are refused, at `apply` by name and again on the host by SID.
"""

from __future__ import annotations

import re

_SID_RE = re.compile(r"^S-1-[0-9]{1,13}(?:-[0-9]{1,10}){0,15}$")
_ACCOUNT_SID_RE = re.compile(r"^S-1-5-21-[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,10}-([0-9]{1,10})$")
# Well-known RIDs of a domain or machine that name groups or special principals, not people.
_GROUP_RIDS = frozenset({*range(512, 528), 553, 571, 572})

# Names (lower case, without a domain) that are never an account to elevate.
WELL_KNOWN_NAMES = frozenset({
    # everyone, and the principals Windows computes at logon
    "everyone", "authenticated users", "interactive", "network", "batch", "service", "anonymous logon",
    "anonymous", "dialup", "remote interactive logon", "console logon", "this organization",
    "other organization", "restricted", "self", "creator owner", "creator group", "owner rights", "iusr",
    "local", "all application packages", "all restricted application packages", "enterprise domain controllers",
    # the machine's own principals
    "system", "local system", "localsystem", "local service", "network service", "trustedinstaller",
    # BUILTIN groups
    "users", "administrators", "guests", "power users", "backup operators", "remote desktop users",
    "account operators", "server operators", "print operators", "replicator", "network configuration operators",
    "performance monitor users", "performance log users", "distributed com users", "iis_iusrs",
    "cryptographic operators", "event log readers", "hyper-v administrators", "remote management users",
    "access control assistance operators", "device owners", "certificate service dcom access",
    "rds remote access servers", "rds endpoint servers", "rds management servers", "storage replica administrators",
    "pre-windows 2000 compatible access", "incoming forest trust builders", "windows authorization access group",
    "terminal server license servers",
    # a domain's well-known groups
    "domain users", "domain admins", "domain guests", "domain computers", "domain controllers",
    "enterprise admins", "schema admins", "cert publishers", "group policy creator owners",
    "read-only domain controllers", "enterprise read-only domain controllers", "cloneable domain controllers",
    "protected users", "key admins", "enterprise key admins", "ras and ias servers", "dnsadmins",
    "dnsupdateproxy", "allowed rodc password replication group", "denied rodc password replication group",
})
WELL_KNOWN_DOMAINS = frozenset({"nt authority", "builtin", "nt service", "window manager", "font driver host"})


def is_sid(value: str) -> bool:
    return bool(_SID_RE.fullmatch(value.upper()))


def canonical_sid(value: str) -> str:
    """The upper-case form, or ValueError when `value` is not a SID."""
    if not is_sid(value):
        raise ValueError(f"not a SID: {value!r}")
    return value.upper()


def account_refusal(sid: str, object_class: str) -> str | None:
    """Why the principal with this SID and class may not be elevated, or None for a user account."""
    match = _ACCOUNT_SID_RE.fullmatch(sid.upper())
    if match is None:
        return f"{sid} is a well-known principal, not an account"
    if int(match.group(1)) in _GROUP_RIDS:
        return f"{sid} is a well-known group, not an account"
    if object_class.lower() != "user":
        return f"{sid} is a {object_class or 'principal of unknown class'}, not a user account"
    return None


def name_refusal(account: str, domain: str | None) -> str | None:
    """Why a configured account name can never be a user to elevate (a well-known principal), or None.

    `account` may itself carry a domain (`NT AUTHORITY\\SYSTEM`); names compare case-insensitively.
    """
    shown = f"{domain}\\{account}" if domain else account
    prefix, _, name = account.strip().rpartition("\\")
    domains = {d.strip().lower() for d in (prefix, domain or "") if d.strip()}
    if is_sid(name) or (domain is not None and is_sid(domain.strip())):
        return f"account {shown!r} is a SID; give the account's name"
    if name.lower() in WELL_KNOWN_NAMES:
        return f"account {shown!r} is a well-known group or principal, not a user account"
    if domains & WELL_KNOWN_DOMAINS:
        return f"account {shown!r} is a built-in principal, not a user account"
    return None
