"""The WinRM port the daemons depend on: group membership and logon sessions on one Windows host."""

from __future__ import annotations

from typing import Protocol

from .endpoint import Credentials, HostEndpoint, LogonSession


class WinRMPort(Protocol):
    def add_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        """Add ``member`` to local ``group`` (a SID, or a name). True if this call changed membership,
        False if it was already a member. Verified by a membership query; raises WinRMError."""
        ...

    def remove_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        """Remove ``member``. True if removed, False if it was not a member (or does not resolve). Verified."""
        ...

    def is_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool: ...

    def list_sessions(self, host: HostEndpoint, creds: Credentials, member: str) -> list[LogonSession]:
        """The logon sessions of ``member``'s account (matched on the bare account name, as quser reports)."""
        ...

    def logoff(self, host: HostEndpoint, creds: Credentials, session_id: str) -> None:
        """Log off one session. A session that no longer exists counts as done."""
        ...
