"""Value objects the WinRM port speaks in: where a host is, who we log on as, and a logon session."""

from __future__ import annotations

from dataclasses import dataclass, field

_SCHEMES = ("http", "https")
_TRANSPORTS = ("ntlm", "basic")


@dataclass(frozen=True)
class HostEndpoint:
    """One Windows host's WinRM listener. ``ca_file`` pins the CA that signed its certificate."""

    address: str
    scheme: str = "https"
    port: int = 5986
    transport: str = "ntlm"
    verify_tls: bool = True
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.scheme not in _SCHEMES:
            raise ValueError(f"scheme must be one of {_SCHEMES}, not {self.scheme!r}")
        if self.transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {_TRANSPORTS}, not {self.transport!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if not self.address or any(c in self.address for c in "/@?# \t\r\n"):
            raise ValueError(f"not a host address: {self.address!r}")

    @property
    def key(self) -> str:
        """``address:port``: identifies the listener (for the per-host shell cap and in messages)."""
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}/wsman"


@dataclass(frozen=True)
class Credentials:
    """The service account. The password never appears in repr() or str()."""

    username: str
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"Credentials(username={self.username!r})"


@dataclass(frozen=True)
class LogonSession:
    """One interactive logon session as ``quser`` reports it (``account`` is the bare user name)."""

    session_id: str
    account: str
    state: str
    logon_time: str | None


@dataclass(frozen=True)
class GroupMember:
    """One member of a local group as the host lists it. ``object_class``: "User", "Group" or "" (unknown)."""

    sid: str
    name: str
    object_class: str = "User"


@dataclass(frozen=True)
class Resolved:
    """What a host said about an account and a group: the SIDs, the account's class and current name,
    and whether the account's SID is in the group right now."""

    account_sid: str
    account_name: str
    object_class: str
    group_sid: str
    member: bool


@dataclass(frozen=True)
class KnownElevation:
    """``elevate_known``'s answer. ``sid_changed``: the name now translates to this other SID, and nothing
    was changed. Otherwise ``changed`` (True: this run added the SID; False: it was already listed) and
    ``was_member`` (the listing before the add; None when the answer was lost and the group re-listed)."""

    changed: bool = False
    was_member: bool | None = None
    sid_changed: str | None = None


@dataclass(frozen=True)
class EndedSession:
    """A logon session found at a revocation, and what was done: ``reported`` or ``logged_off``."""

    session: LogonSession
    action: str


@dataclass(frozen=True)
class Revocation:
    """``revoke``'s answer: ``removed`` (True: this run removed the SID, False: it was not listed; either
    way the group no longer lists it) and the account's sessions. ``sessions_listed`` is False when the
    answer was lost and only the membership could be re-verified: the sessions are then still to be seen."""

    removed: bool
    sessions: tuple[EndedSession, ...] = ()
    sessions_error: str | None = None
    sessions_listed: bool = True
