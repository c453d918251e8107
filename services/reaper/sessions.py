"""Logon sessions outlive a group change: a token keeps the group until its session ends.

After a confirmed removal the reaper lists the account's sessions on the host and, per the task's
`on_revoke`, logs them off (`logoff`) or only reports them (`report`, the default) in
`elevation.revoked` and the audit row. Normally the removal's own PowerShell run does it
(`WinRMPort.revoke`, read by `ended_sessions`); `end_sessions` does it in runs of its own when that
run's answer was lost and only the removal could be re-verified. A failure here never undoes or delays
the revocation: the group change is what was promised; the sessions are reported with the error instead.
"""

from __future__ import annotations

from typing import Any

from shared import logs
from shared.winrm import Credentials, HostEndpoint, Revocation, WinRMError, WinRMPort

log = logs.get_logger()


def end_sessions(port: WinRMPort, endpoint: HostEndpoint, creds: Credentials, account: str,
                 on_revoke: str) -> tuple[list[dict[str, Any]], str | None]:
    """Returns the sessions found (each with the action taken) and an error text, if any step failed."""
    try:
        sessions = port.list_sessions(endpoint, creds, account)
    except WinRMError as exc:
        log.warning("revocation.sessions.failed", error=str(exc))
        return [], str(exc)[:500]
    found: list[dict[str, Any]] = []
    error = None
    for session in sessions:
        entry: dict[str, Any] = {"session_id": session.session_id, "account": session.account,
                                 "state": session.state, "logon_time": session.logon_time, "action": "reported"}
        if on_revoke == "logoff":
            try:
                port.logoff(endpoint, creds, session.session_id)
                entry["action"] = "logged_off"
            except WinRMError as exc:
                entry["action"] = "logoff_failed"
                error = str(exc)[:500]
                log.warning("revocation.logoff.failed", session_id=session.session_id, error=str(exc))
        found.append(entry)
    if found:
        log.info("revocation.sessions", on_revoke=on_revoke, sessions=found)
    return found, error


def ended_sessions(revocation: Revocation, on_revoke: str) -> tuple[list[dict[str, Any]], str | None]:
    """The sessions the revocation's own run found (and logged off), in the shape `end_sessions` returns."""
    found: list[dict[str, Any]] = []
    for ended in revocation.sessions:
        action = ended.action
        if on_revoke == "logoff" and action != "logged_off":
            action = "logoff_failed"
        found.append({"session_id": ended.session.session_id, "account": ended.session.account,
                      "state": ended.session.state, "logon_time": ended.session.logon_time, "action": action})
    if found:
        log.info("revocation.sessions", on_revoke=on_revoke, sessions=found)
    if revocation.sessions_error:
        log.warning("revocation.sessions.failed", error=revocation.sessions_error)
    return found, revocation.sessions_error[:500] if revocation.sessions_error else None
