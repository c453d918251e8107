"""Strict validation of the data the adapter passes to a host: member names, SIDs, group ids, session ids.

Windows forbids ``" / \\ [ ] : ; | = , + * ? < >`` and control characters in account names and caps
the sAM name at 20 characters. We are stricter than Windows on purpose (a PAM product prefers refusing
an odd name to running it): no ``@`` (UPNs), no backtick, no non-ASCII punctuation or symbols (that
includes the quote look-alikes U+2018..U+201F that PowerShell treats as quotes), no non-NFC text.
Allowed: ASCII letters and digits, Unicode letters/digits, space (not leading/trailing) and
``! # $ % & ' ( ) - . ^ _ { } ~``. A name is data only (it travels as an environment variable), so
these rules are defence in depth, not the escaping.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from shared.sids import account_refusal, is_sid

from .errors import InvalidNameError

MAX_SAM_LENGTH = 20
MAX_DOMAIN_LENGTH = 15
MAX_GROUP_NAME_LENGTH = 256

_ALLOWED_ASCII_PUNCT = frozenset(" !#$%&'()-.^_{}~")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,13}[A-Za-z0-9_-])?$")
_SID_RE = re.compile(r"^S-1-5(?:-[0-9]{1,10}){1,14}$")
_SESSION_RE = re.compile(r"^[0-9]{1,5}$")
# A local group: BUILTIN (S-1-5-32-<RID>) or one the machine made (S-1-5-21-<machine>-<RID>).
_GROUP_SID_RE = re.compile(r"^S-1-5-(?:32-[0-9]{1,10}|21-[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,10}-[0-9]{1,10})$")

GroupKind = Literal["SID", "Name"]


def _refuse(what: str, why: str) -> InvalidNameError:
    return InvalidNameError("-", "validate", f"{what} refused: {why}")


def _check_chars(value: str, what: str) -> None:
    if unicodedata.normalize("NFC", value) != value:
        raise _refuse(what, "not in Unicode NFC form")
    for ch in value:
        if ch.isascii():
            if not (ch.isalnum() or ch in _ALLOWED_ASCII_PUNCT):
                raise _refuse(what, f"character U+{ord(ch):04X} is not allowed")
        elif unicodedata.category(ch)[0] not in ("L", "N"):
            raise _refuse(what, f"character U+{ord(ch):04X} is not allowed")
    if value != value.strip(" "):
        raise _refuse(what, "leading or trailing space")
    if not value.strip(". "):
        raise _refuse(what, "only dots and spaces")


def member_name(account: str, domain: str | None) -> str:
    """How Windows names the member: `DOMAIN\\account` for a domain account, the bare name for a local one."""
    return f"{domain}\\{account}" if domain else account


def validate_member(member: str) -> str:
    """Return ``member`` unchanged if it is ``DOMAIN\\account`` or a bare ``account``; else raise."""
    if not isinstance(member, str) or not member:
        raise _refuse("member", "empty")
    parts = member.split("\\")
    if len(parts) > 2:
        raise _refuse("member", "more than one backslash")
    sam = parts[-1]
    if len(parts) == 2 and not _DOMAIN_RE.fullmatch(parts[0]):
        raise _refuse("member", "domain part is not a NetBIOS domain name")
    if not sam:
        raise _refuse("member", "empty account name")
    if len(sam) > MAX_SAM_LENGTH:
        raise _refuse("member", f"account name longer than {MAX_SAM_LENGTH} characters")
    _check_chars(sam, "member")
    return member


def validate_group(group: str) -> tuple[GroupKind, str]:
    """Classify ``group`` as a SID (preferred: language independent) or a validated local group name."""
    if not isinstance(group, str) or not group:
        raise _refuse("group", "empty")
    if group.upper().startswith("S-1-"):
        if not _SID_RE.fullmatch(group.upper()):
            raise _refuse("group", "malformed SID")
        return "SID", group.upper()
    if "\\" in group:
        raise _refuse("group", "backslash in a local group name")
    if len(group) > MAX_GROUP_NAME_LENGTH:
        raise _refuse("group", f"longer than {MAX_GROUP_NAME_LENGTH} characters")
    _check_chars(group, "group")
    return "Name", group


def validate_group_sid(sid: str) -> str:
    """A local group's SID (``S-1-5-32-544``, or a machine group ``S-1-5-21-m-m-m-RID``), upper-cased."""
    if not isinstance(sid, str) or not is_sid(sid):
        raise _refuse("group SID", "not a SID")
    if not _GROUP_SID_RE.fullmatch(sid.upper()):
        raise _refuse("group SID", "not the SID of a local group (S-1-5-32-RID or S-1-5-21-...-RID)")
    return sid.upper()


def validate_member_sid(sid: str) -> str:
    """An account's SID (``S-1-5-21-<domain or machine>-<RID>``, not a well-known group RID), upper-cased.

    Only accounts are ever added or removed, so a well-known principal (Everyone, Authenticated Users,
    Domain Users...) never reaches a host as a member to change, whatever the caller checked before.
    """
    if not isinstance(sid, str) or not is_sid(sid):
        raise _refuse("member SID", "not a SID")
    why = account_refusal(sid, "User")
    if why is not None:
        raise _refuse("member SID", why)
    return sid.upper()


def validate_session_id(session_id: str) -> str:
    """A logon session id as ``quser`` prints it: a small decimal number."""
    if not isinstance(session_id, str) or not _SESSION_RE.fullmatch(session_id):
        raise _refuse("session id", "not a decimal number of at most 5 digits")
    return session_id
