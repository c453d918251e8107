"""WinRM adapter: resolve accounts to SIDs, add/remove local group members by SID, and manage logon
sessions on Windows hosts.

``WinRMPort`` is what the daemons depend on; ``MembershipClient`` is the real adapter (pywinrm),
``FakeWinRM`` the in-memory fake for unit tests. See docs/winrm.md.
"""

from .client import MembershipClient
from .endpoint import Credentials, GroupMember, HostEndpoint, LogonSession, Resolved
from .errors import (
    AccessDeniedError,
    AuthenticationError,
    GroupNotFoundError,
    InvalidNameError,
    PermanentWinRMError,
    PrincipalNotFoundError,
    RetryableWinRMError,
    TLSError,
    WinRMError,
)
from .fake import FakeWinRM
from .metered import Metered
from .port import WinRMPort

__all__ = [
    "AccessDeniedError",
    "AuthenticationError",
    "Credentials",
    "FakeWinRM",
    "GroupMember",
    "GroupNotFoundError",
    "HostEndpoint",
    "InvalidNameError",
    "LogonSession",
    "MembershipClient",
    "Metered",
    "PermanentWinRMError",
    "PrincipalNotFoundError",
    "Resolved",
    "RetryableWinRMError",
    "TLSError",
    "WinRMError",
    "WinRMPort",
]
