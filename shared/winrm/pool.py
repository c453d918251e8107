"""ShellPool: authenticated connections with an open shell, kept per host and credentials for reuse.

Opening a shell costs an NTLM handshake (three HTTP requests) and a Create, and closing it a Delete; a
pooled call costs only Command, Receive and Signal. A shell's environment is fixed when it is created,
which is why every script carries its own data (:mod:`.scripts`).

Bounds: the caller (MembershipClient) holds one of the host's ``max_per_host`` slots for each call, so
at most that many connections per host are in use; the pool keeps no more than ``max_per_host`` per
host idle either (closing the oldest), which stays under the host's MaxShellsPerUser (30 by default)
for a few processes with the default cap of 5. A connection idle longer than ``idle_sec`` is closed
(Delete) instead of reused, before Windows' 120 s keep-alive limit can drop its TCP connection, and its
shell is created with an IdleTimeOut of ``idle_sec + 60`` so a process that dies leaks nothing for long.
A connection is reused only after a clean run; any failure closes it. A reused shell that the host
dropped (``w:InvalidSelectors`` on Command: nothing ran) is replaced once, within the same deadline.
``idle_sec=0`` turns pooling off: a connection and shell per call, as before. The daemons ``close`` the
pool when they stop (after their work has drained), so a restart leaks no shell.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from shared import logs

from .endpoint import Credentials, HostEndpoint
from .shell import CLEANUP_GRACE_SEC, Connection, ScriptOutput, ScriptRunFailed, ShellGone

log = logs.get_logger()


class ShellPool:
    def __init__(self, *, operation_timeout_sec: int, read_timeout_sec: int, idle_sec: float,
                 max_per_host: int) -> None:
        self.operation_timeout_sec = operation_timeout_sec
        self.read_timeout_sec = read_timeout_sec
        self.idle_sec = idle_sec
        self.max_per_host = max_per_host
        self._idle: dict[tuple[HostEndpoint, Credentials], deque[Connection]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0  # connections (and shells) opened, for tests and benchmarks

    def run(self, host: HostEndpoint, creds: Credentials, script: str, deadline: float) -> ScriptOutput:
        """Run ``script`` on a pooled (or new) connection. Raises ScriptRunFailed."""
        connection = self._take(host, creds)
        for attempt in (1, 2):
            if connection is None:
                connection = self._open(host, creds, deadline)
            try:
                output = connection.run(script, deadline)
            except ShellGone as gone:
                connection.close()
                connection = None
                if attempt == 2:
                    raise ScriptRunFailed(gone, command_sent=False) from None
                continue  # a pooled shell the host dropped: nothing ran, open a fresh one
            except BaseException:
                connection.close()
                raise
            self._give_back(connection)
            return output
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Delete every idle shell, all at once (each within the cleanup grace): a daemon that stops without
        this leaks its shells on each host until their IdleTimeOut, and a few restarts in a row then use up the
        host's MaxShellsPerUser, failing every call of every process until they expire."""
        with self._lock:
            self._closed = True  # a call still running gives its connection back after this: closed, not pooled
            connections = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        closers = [threading.Thread(target=c.close, name="winrm-shell-close", daemon=True) for c in connections]
        for closer in closers:
            closer.start()
        deadline = time.monotonic() + CLEANUP_GRACE_SEC + 1.0
        for closer in closers:
            closer.join(max(0.0, deadline - time.monotonic()))
        log.info("winrm.pool.closed", shells=len(connections), left=sum(1 for c in closers if c.is_alive()))

    def idle_count(self, host: HostEndpoint | None = None) -> int:
        with self._lock:
            return sum(len(q) for (h, _c), q in self._idle.items() if host is None or h.key == host.key)

    def _open(self, host: HostEndpoint, creds: Credentials, deadline: float) -> Connection:
        idle_timeout = int(self.idle_sec + 60) if self.idle_sec > 0 else None
        connection = Connection(host, creds, operation_timeout_sec=self.operation_timeout_sec,
                                read_timeout_sec=self.read_timeout_sec, idle_timeout_sec=idle_timeout)
        try:
            connection.open(deadline)
        except Exception as exc:
            connection.close()
            raise ScriptRunFailed(exc, command_sent=False) from None
        with self._lock:
            self.opened += 1
        return connection

    def _take(self, host: HostEndpoint, creds: Credentials) -> Connection | None:
        expired: list[Connection] = []
        taken = None
        now = time.monotonic()
        with self._lock:
            for key, idle in list(self._idle.items()):
                while idle and now - idle[0].last_used > self.idle_sec:
                    expired.append(idle.popleft())
                if key == (host, creds) and idle:
                    taken = idle.pop()  # the most recently used: its TCP connection is the freshest
                if not idle:
                    del self._idle[key]
        for connection in expired:
            connection.close()
        return taken

    def _give_back(self, connection: Connection) -> None:
        if self.idle_sec <= 0 or connection.broken or self._closed:
            connection.close()
            return
        surplus: Connection | None = None
        with self._lock:
            self._idle.setdefault((connection.host, connection.creds), deque()).append(connection)
            same_host = [(key, q) for key, q in self._idle.items() if key[0].key == connection.host.key]
            if sum(len(q) for _k, q in same_host) > self.max_per_host:
                key, oldest = min(same_host, key=lambda kq: kq[1][0].last_used)
                surplus = oldest.popleft()
                if not oldest:
                    del self._idle[key]
        if surplus is not None:
            surplus.close()
