"""Run one PowerShell script on a host through pywinrm's Protocol API, within a hard deadline.

A :class:`Connection` is one authenticated HTTP session and one open shell: it runs ``powershell.exe
-NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand <script>`` (the script carries its
own data, see :mod:`.scripts`), Receives until Done or the deadline, then Signals (terminate); it can
run again (:mod:`.pool` reuses it) and ``close`` Deletes the shell so none leaks into the host's
MaxShellsPerUser quota. ``run_script`` is one run on a connection of its own.

The deadline is real: every HTTP request (the NTLM handshake's included) goes through an adapter that
gives it only the time left (connect and read together, urllib3 ``Timeout(total=...)``) and refuses to
start one after the deadline; each Receive asks the host to answer within the time left
(``OperationTimeout``). Cleanup runs after the deadline only for ``cleanup_grace_sec`` and then only
sends Delete (which ends the command too). So a call returns by ``deadline + cleanup_grace_sec`` plus
scheduling noise, unless a host trickles a response byte by byte (each socket read is bounded, not
their sum).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Timeout
from winrm.exceptions import WinRMOperationTimeoutError, WSManFaultError
from winrm.protocol import Protocol

from .endpoint import Credentials, HostEndpoint
from .scripts import POWERSHELL, powershell_arguments


@dataclass(frozen=True)
class ScriptOutput:
    stdout: bytes
    stderr: bytes
    rc: int


class DeadlineExceeded(TimeoutError):
    """The command did not finish before the operation's deadline (it may still be running)."""


CLEANUP_GRACE_SEC = 1.0  # how long Signal/Delete may run past the deadline
_MIN_REQUEST_SEC = 0.05  # below this much time left, a request is not started


class _Budget:
    """The instant (time.monotonic()) the requests of one run must end by; moved for the cleanup."""

    def __init__(self, until: float) -> None:
        self.until = until

    def left(self) -> float:
        return self.until - time.monotonic()


class _DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose every request is bounded by the time left in the budget."""

    def __init__(self, budget: _Budget, read_timeout_sec: float) -> None:
        super().__init__()
        self._budget = budget
        self._read_timeout_sec = read_timeout_sec

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        left = self._budget.left()
        if left < _MIN_REQUEST_SEC:
            raise DeadlineExceeded("no time left before the deadline for another request")
        cap = min(float(self._read_timeout_sec), left)
        bounded: Any = Timeout(total=left, connect=cap, read=cap)  # requests passes a urllib3 Timeout through
        return super().send(request, stream=stream, timeout=bounded, verify=verify, cert=cert, proxies=proxies)


def _bind_budget(protocol: Protocol, budget: _Budget, read_timeout_sec: float) -> None:
    """Route every request of ``protocol`` (its session is built lazily by pywinrm) through the adapter."""
    transport: Any = protocol.transport
    send = transport._send_message_request

    def bounded_send(session: requests.Session, prepared: requests.PreparedRequest) -> requests.Response:
        if not isinstance(session.get_adapter(prepared.url or ""), _DeadlineAdapter):
            adapter = _DeadlineAdapter(budget, read_timeout_sec)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            # The session's proxies and CA are explicit (proxy=None, ca_trust_path): do not read the proxy
            # variables again on every request (3% of the elevator's CPU in a burst).
            session.trust_env = False
        return cast(requests.Response, send(session, prepared))

    transport._send_message_request = bounded_send


class ScriptRunFailed(Exception):
    """Wraps the underlying error; ``command_sent`` says whether the script may have run (ambiguous)."""

    def __init__(self, cause: BaseException, command_sent: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.command_sent = command_sent


class ShellGone(Exception):
    """The host no longer knows the shell (``w:InvalidSelectors`` on Command): the script did not run."""


def _protocol(host: HostEndpoint, creds: Credentials, operation_timeout_sec: int, read_timeout_sec: int) -> Protocol:
    ca: Any = host.ca_file  # pywinrm: None = system CAs only (no env var fallback)
    return Protocol(
        host.url,
        transport="ntlm" if host.transport == "ntlm" else "basic",
        username=creds.username,
        password=creds.password,
        server_cert_validation="validate" if host.verify_tls else "ignore",
        ca_trust_path=cast(str, ca),
        read_timeout_sec=read_timeout_sec,
        operation_timeout_sec=operation_timeout_sec,
        message_encryption="auto",
        proxy=None,
    )


def _invalid_selectors(exc: BaseException) -> bool:
    return isinstance(exc, WSManFaultError) and str(exc.fault_subcode or "").endswith("InvalidSelectors")


class Connection:
    """One authenticated HTTP session (one NTLM handshake) and one open shell on a host, used by one caller
    at a time. ``run`` may be called many times; ``close`` deletes the shell and drops the session."""

    def __init__(self, host: HostEndpoint, creds: Credentials, *, operation_timeout_sec: int,
                 read_timeout_sec: int, idle_timeout_sec: int | None = None) -> None:
        self.host = host
        self.creds = creds
        self._operation_timeout_sec = operation_timeout_sec
        self._idle_timeout_sec = idle_timeout_sec
        self._protocol = _protocol(host, creds, operation_timeout_sec, read_timeout_sec)
        self._budget = _Budget(0.0)
        _bind_budget(self._protocol, self._budget, read_timeout_sec)
        self.shell_id: str | None = None
        self.runs = 0
        self.broken = False
        self.last_used = time.monotonic()

    def open(self, deadline: float) -> None:
        """Authenticate and Create the shell (no environment: each script carries its own data)."""
        self._budget.until = deadline
        # As an xs:duration (PT150S), the form Windows' own clients send: pywinrm puts the value into the
        # envelope as given, and a bare number of seconds is not a duration.
        idle = None if self._idle_timeout_sec is None else f"PT{int(self._idle_timeout_sec)}S"
        self.shell_id = self._protocol.open_shell(noprofile=True, idle_timeout=idle)

    def run(self, script: str, deadline: float) -> ScriptOutput:
        """Command, Receive until Done, Signal. Raises ShellGone when the host refused the Command because it
        no longer has the shell (nothing ran), ScriptRunFailed(command_sent=True) on any other failure."""
        assert self.shell_id is not None
        self._budget.until = deadline
        protocol = self._protocol
        try:
            command_id = protocol.run_command(self.shell_id, POWERSHELL, powershell_arguments(script))
        except Exception as exc:
            if _invalid_selectors(exc):
                raise ShellGone(str(exc)) from None
            raise ScriptRunFailed(exc, command_sent=True) from None
        self.runs += 1
        try:
            out: list[bytes] = []
            err: list[bytes] = []
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded("command did not finish before the deadline")
                # Ask the host to answer (w:TimedOut if still running) before our own read gives up.
                protocol.operation_timeout_sec = max(1, min(self._operation_timeout_sec, int(left - 0.5)))
                try:
                    stdout, stderr, rc, done = protocol.get_command_output_raw(self.shell_id, command_id)
                except WinRMOperationTimeoutError:
                    continue  # the command is still running; Receive again
                out.append(stdout)
                err.append(stderr)
                if done:
                    break
        except Exception as exc:
            self._budget.until = max(deadline, time.monotonic()) + CLEANUP_GRACE_SEC
            raise ScriptRunFailed(exc, command_sent=True) from None
        # The output is read: a Signal that fails costs only this connection (not reused).
        self._budget.until = max(deadline, time.monotonic()) + CLEANUP_GRACE_SEC
        try:
            protocol.cleanup_command(self.shell_id, command_id)
        except Exception:
            self.broken = True
        self.last_used = time.monotonic()
        return ScriptOutput(b"".join(out), b"".join(err), rc)

    def close(self, grace_sec: float = CLEANUP_GRACE_SEC) -> None:
        """Best effort, within ``grace_sec``: Delete the shell (it ends a running command too), drop the session.
        A shell that leaks expires on the host after its IdleTimeOut."""
        self._budget.until = time.monotonic() + grace_sec
        if self.shell_id is not None:
            with contextlib.suppress(Exception):
                self._protocol.close_shell(self.shell_id)
            self.shell_id = None
        with contextlib.suppress(Exception):
            self._protocol.transport.close_session()


def run_script(
    host: HostEndpoint,
    creds: Credentials,
    script: str,
    *,
    operation_timeout_sec: int,
    read_timeout_sec: int,
    deadline: float,
    cleanup_grace_sec: float = CLEANUP_GRACE_SEC,
) -> ScriptOutput:
    """Run ``script`` on a connection and shell of its own, closed afterwards (no pooling).
    ``deadline`` is a time.monotonic() value."""
    connection = Connection(host, creds, operation_timeout_sec=operation_timeout_sec,
                            read_timeout_sec=read_timeout_sec)
    try:
        try:
            connection.open(deadline)
        except Exception as exc:
            raise ScriptRunFailed(exc, command_sent=False) from None
        try:
            return connection.run(script, deadline)
        except ShellGone as gone:
            raise ScriptRunFailed(gone, command_sent=False) from None
    finally:
        # Past the deadline, only Delete (it ends the command as well), within the grace.
        connection.close(cleanup_grace_sec)
