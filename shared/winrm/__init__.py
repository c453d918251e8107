"""WinRM adapter: resolve accounts to SIDs, add/remove local group members by SID, and manage logon
sessions on Windows hosts.

``WinRMPort`` is what the daemons depend on; ``MembershipClient`` is the real adapter (pywinrm),
``FakeWinRM`` the in-memory fake for unit tests. See docs/winrm.md.
"""

from .client import MembershipClient
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
    "EndedSession",
    "FakeWinRM",
    "GroupMember",
    "GroupNotFoundError",
    "HostEndpoint",
    "InvalidNameError",
    "KnownElevation",
    "LogonSession",
    "MembershipClient",
    "Metered",
    "PermanentWinRMError",
    "PrincipalNotFoundError",
    "Resolved",
    "RetryableWinRMError",
    "Revocation",
    "TLSError",
    "WinRMError",
    "WinRMPort",
]
