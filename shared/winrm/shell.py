"""Run one fixed PowerShell script on a host through pywinrm's Protocol API, with an overall deadline.

Open a shell whose environment carries the data, run ``powershell.exe -NoProfile -NonInteractive
-ExecutionPolicy Bypass -EncodedCommand <script>``, Receive until Done or the deadline, and always
Signal (terminate) and Delete in ``finally`` so no shell leaks into the host's MaxShellsPerUser quota.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, cast

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
) -> ScriptOutput:
    """Run ``script`` with ``env`` as the shell environment. ``deadline`` is a time.monotonic() value."""
    protocol = _protocol(host, creds, operation_timeout_sec, read_timeout_sec)
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
            if time.monotonic() > deadline:
                raise DeadlineExceeded("command did not finish before the deadline")
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
        if command_id is not None:
            with contextlib.suppress(Exception):
                protocol.cleanup_command(shell_id or "", command_id)
        if shell_id is not None:
            with contextlib.suppress(Exception):
                protocol.close_shell(shell_id)
        with contextlib.suppress(Exception):
            protocol.transport.close_session()
