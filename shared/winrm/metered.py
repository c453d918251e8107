"""`Metered`: any WinRMPort, with each call's latency and the calls in flight per host exported to Prometheus.

A decorator around the port rather than code inside one adapter, so that the real client and the
in-memory fake are measured alike. Outcomes are `ok`, `retryable` or `permanent` (the error class's
own verdict), and any other exception is `error`. The host label is the configured host's key
(address and port), so its cardinality is the size of the configuration, never of the traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from shared import metrics

from .endpoint import Credentials, GroupMember, HostEndpoint, KnownElevation, LogonSession, Resolved, Revocation
from .errors import WinRMError
from .port import WinRMPort

T = TypeVar("T")


class Metered:
    def __init__(self, port: WinRMPort) -> None:
        self.port = port

    def __getattr__(self, name: str) -> object:
        """Everything else is the adapter's own (`max_call_seconds`, on which callers build their leases)."""
        return getattr(self.port, name)

    def close(self) -> None:
        """Close the adapter's pooled shells, if it pools any (a test's in-memory port has none)."""
        close = getattr(self.port, "close", None)
        if close is not None:
            close()

    def _call(self, operation: str, host: HostEndpoint, call: Callable[[], T]) -> T:
        in_flight = metrics.WINRM_IN_FLIGHT.labels(host=host.key)
        in_flight.inc()
        started = time.monotonic()
        outcome = "error"
        try:
            result = call()
            outcome = "ok"
            return result
        except WinRMError as exc:
            outcome = "retryable" if exc.retryable else "permanent"
            raise
        finally:
            in_flight.dec()
            metrics.WINRM_CALLS.labels(operation=operation, outcome=outcome).observe(time.monotonic() - started)

    def resolve(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> Resolved:
        return self._call("resolve", host, lambda: self.port.resolve(host, creds, group, member))

    def add_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        return self._call("add_member", host, lambda: self.port.add_member(host, creds, group_sid, member_sid))

    def remove_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        return self._call("remove_member", host, lambda: self.port.remove_member(host, creds, group_sid, member_sid))

    def elevate_known(self, host: HostEndpoint, creds: Credentials, group_sid: str, member: str,
                      member_sid: str) -> KnownElevation:
        return self._call("elevate_known", host,
                          lambda: self.port.elevate_known(host, creds, group_sid, member, member_sid))

    def revoke(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str, member: str,
               logoff: bool) -> Revocation:
        return self._call("revoke", host, lambda: self.port.revoke(host, creds, group_sid, member_sid, member, logoff))

    def list_members(self, host: HostEndpoint, creds: Credentials, group_sid: str) -> list[GroupMember]:
        return self._call("list_members", host, lambda: self.port.list_members(host, creds, group_sid))

    def is_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        return self._call("is_member", host, lambda: self.port.is_member(host, creds, group_sid, member_sid))

    def list_sessions(self, host: HostEndpoint, creds: Credentials, member: str) -> list[LogonSession]:
        return self._call("list_sessions", host, lambda: self.port.list_sessions(host, creds, member))

    def logoff(self, host: HostEndpoint, creds: Credentials, session_id: str) -> None:
        self._call("logoff", host, lambda: self.port.logoff(host, creds, session_id))
