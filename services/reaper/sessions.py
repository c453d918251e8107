"""Logon sessions outlive a group change: a token keeps the group until its session ends.

After a confirmed removal the reaper lists the account's sessions on the host and, per the task's
`on_revoke`, logs them off (`logoff`) or only reports them (`report`, the default) in
`elevation.revoked` and the audit row. A failure here never undoes or delays the revocation: the
group change is what was promised; the sessions are reported with the error instead.
"""

from __future__ import annotations

from typing import Any

from shared import logs
from shared.winrm import Credentials, HostEndpoint, WinRMError, WinRMPort

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
