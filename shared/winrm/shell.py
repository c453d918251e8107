"""Run one fixed PowerShell script on a host through pywinrm's Protocol API, within a hard deadline.

Open a shell whose environment carries the data, run ``powershell.exe -NoProfile -NonInteractive
-ExecutionPolicy Bypass -EncodedCommand <script>``, Receive until Done or the deadline, then Signal
(terminate) and Delete so no shell leaks into the host's MaxShellsPerUser quota.

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
from winrm.exceptions import WinRMOperationTimeoutError
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
        return cast(requests.Response, send(session, prepared))

    transport._send_message_request = bounded_send


class ScriptRunFailed(Exception):
    """Wraps the underlying error; ``command_sent`` says whether the script may have run (ambiguous)."""

    def __init__(self, cause: BaseException, command_sent: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.command_sent = command_sent


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


def run_script(
    host: HostEndpoint,
    creds: Credentials,
    script: str,
    env: dict[str, str],
    *,
    operation_timeout_sec: int,
    read_timeout_sec: int,
    deadline: float,
    cleanup_grace_sec: float = CLEANUP_GRACE_SEC,
) -> ScriptOutput:
    """Run ``script`` with ``env`` as the shell environment. ``deadline`` is a time.monotonic() value."""
    protocol = _protocol(host, creds, operation_timeout_sec, read_timeout_sec)
    budget = _Budget(deadline)
    _bind_budget(protocol, budget, read_timeout_sec)
    shell_id: str | None = None
    command_id: str | None = None
    command_sent = False
    try:
        shell_id = protocol.open_shell(env_vars=env, noprofile=True)
        command_sent = True
        command_id = protocol.run_command(shell_id, POWERSHELL, powershell_arguments(script))
        out: list[bytes] = []
        err: list[bytes] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("command did not finish before the deadline")
            # Ask the host to answer (w:TimedOut if still running) before our own read gives up.
            protocol.operation_timeout_sec = max(1, min(operation_timeout_sec, int(left - 0.5)))
            try:
                stdout, stderr, rc, done = protocol.get_command_output_raw(shell_id, command_id)
            except WinRMOperationTimeoutError:
                continue  # the command is still running; Receive again
            out.append(stdout)
            err.append(stderr)
            if done:
                return ScriptOutput(b"".join(out), b"".join(err), rc)
    except Exception as exc:
        raise ScriptRunFailed(exc, command_sent) from None
    finally:
        # Best effort: the output is already read (or lost); a leaked shell expires after IdleTimeOut.
        # Past the deadline, only Delete (it ends the command as well), within the grace.
        late = time.monotonic() >= deadline
        budget.until = deadline + cleanup_grace_sec
        if command_id is not None and not late:
            with contextlib.suppress(Exception):
                protocol.cleanup_command(shell_id or "", command_id)
        if shell_id is not None:
            with contextlib.suppress(Exception):
                protocol.close_shell(shell_id)
        with contextlib.suppress(Exception):
            protocol.transport.close_session()
