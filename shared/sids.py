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
    "everyone", "authenticated users", "users", "domain users", "domain admins", "domain guests",
    "domain computers", "domain controllers", "enterprise admins", "schema admins", "administrators",
    "guests", "interactive", "network", "system", "local service", "network service", "anonymous logon",
    "creator owner", "batch", "service", "remote desktop users", "power users", "backup operators",
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
    """Why a configured account name can never be a user to elevate (a well-known principal), or None."""
    if is_sid(account):
        return f"account {account!r} is a SID; give the account's name"
    if account.strip().lower() in WELL_KNOWN_NAMES:
        return f"account {account!r} is a well-known group or principal, not a user account"
    if domain is not None and domain.strip().lower() in WELL_KNOWN_DOMAINS:
        return f"account {domain}\\{account} is a built-in principal, not a user account"
    return None
