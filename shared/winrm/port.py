"""The WinRM port the daemons depend on: group membership by SID, and logon sessions, on one Windows host.

Names are resolved once (`resolve`); every change and every check after that is by SID, so an account
renamed on the host (same SID) is still found, and a name that no longer resolves is never mistaken
for "not a member".
"""

from __future__ import annotations

from typing import Protocol

from .endpoint import Credentials, GroupMember, HostEndpoint, KnownElevation, LogonSession, Resolved, Revocation


class WinRMPort(Protocol):
    def resolve(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> Resolved:
        """Resolve ``member`` (``DOMAIN\\account`` or a bare local account) to its SID and class, and
        ``group`` (a SID or a local group name) to its SID; and say whether the account is a member now.
        Raises PrincipalNotFoundError / GroupNotFoundError / WinRMError."""
        ...

    def add_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        """Add the account ``member_sid`` to the local group ``group_sid``. True if this call changed
        membership, False if it was already a member. Verified by listing the group's SIDs; raises."""
        ...

    def remove_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        """Remove ``member_sid``. True if removed, False if it was not a member. Verified by listing the
        group's SIDs: success means the host listed the group without that SID. Raises WinRMError."""
        ...

    def elevate_known(self, host: HostEndpoint, creds: Credentials, group_sid: str, member: str,
                      member_sid: str) -> KnownElevation:
        """One run: if ``member`` still translates to ``member_sid`` (learnt by an earlier grant), add that SID
        to ``group_sid`` and verify; else change nothing and answer ``sid_changed``. Raises like add_member
        (PrincipalNotFoundError when the name no longer resolves)."""
        ...

    def revoke(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str, member: str,
               logoff: bool) -> Revocation:
        """One run: remove ``member_sid``, verify, then list ``member``'s logon sessions (and log them off if
        ``logoff``). Raises like remove_member; a failure in the sessions part is ``sessions_error``."""
        ...

    def list_members(self, host: HostEndpoint, creds: Credentials, group_sid: str) -> list[GroupMember]:
        """Every member of the group, by SID (with the name and class the host reports)."""
        ...

    def is_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        """Whether the group lists ``member_sid`` (a listing, never a name lookup)."""
        ...

    def list_sessions(self, host: HostEndpoint, creds: Credentials, member: str) -> list[LogonSession]:
        """The logon sessions of ``member``'s account (matched on the bare account name, as quser reports)."""
        ...

    def logoff(self, host: HostEndpoint, creds: Credentials, session_id: str) -> None:
        """Log off one session. A session that no longer exists counts as done."""
        ...
