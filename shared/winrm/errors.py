"""The adapter's error classes. Every error names the host and the operation, never the password."""

from __future__ import annotations


class WinRMError(Exception):
    """A WinRM operation failed. ``retryable`` says whether the same call may succeed later."""

    retryable: bool = False

    def __init__(self, host: str, operation: str, detail: str) -> None:
        self.host = host
        self.operation = operation
        self.detail = detail
        super().__init__(f"winrm {operation} on {host} failed: {detail}")


class RetryableWinRMError(WinRMError):
    """Transient: host down, timeout, 5xx, WSMan TimedOut/InternalError/quota. Retry with backoff."""

    retryable = True


class PermanentWinRMError(WinRMError):
    """Will not heal by itself: bad credentials, access denied, TLS trust, unknown group or principal."""

    retryable = False


class InvalidNameError(PermanentWinRMError, ValueError):
    """A member, group or session id was refused before anything was sent to the host."""


class GroupNotFoundError(PermanentWinRMError):
    """The host has no such local group (by SID or by name)."""


class PrincipalNotFoundError(PermanentWinRMError):
    """The member name does not resolve to an account on the host."""


class AccessDeniedError(PermanentWinRMError):
    """The service account may log on but not change the group (or not log on over WinRM at all)."""


class AuthenticationError(PermanentWinRMError):
    """The host rejected the credentials (HTTP 401)."""


class TLSError(PermanentWinRMError):
    """The host's certificate did not verify against the trusted CAs."""
