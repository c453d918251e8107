"""MembershipClient: the real WinRM adapter (pywinrm Protocol API) behind :class:`WinRMPort`.

Every call validates its data first (:mod:`.names`), passes it only as shell environment variables
to a fixed script (:mod:`.scripts`), holds one of ``max_shells_per_host`` slots for the host while
its shell is open, and maps failures to Retryable/PermanentWinRMError (:mod:`.classify`).

Ambiguity: if a change (add/remove) fails after its Command was sent (read timeout, dropped
connection, deadline...), the script may have run. The client then asks the host again with
``is_member``: if the wanted end state holds it returns True (it cannot tell whether this call or
an earlier one made the change, and True is the safe answer for the caller's bookkeeping);
otherwise, or if that query fails too, it raises the original error.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

from . import scripts
from .classify import classify
from .endpoint import Credentials, HostEndpoint, LogonSession
from .errors import (
    AccessDeniedError,
    GroupNotFoundError,
    InvalidNameError,
    PermanentWinRMError,
    PrincipalNotFoundError,
    RetryableWinRMError,
    WinRMError,
)
from .names import validate_group, validate_member, validate_session_id
from .shell import ScriptRunFailed, run_script


class _Ambiguous(Exception):
    def __init__(self, error: WinRMError) -> None:
        super().__init__(str(error))
        self.error = error


class MembershipClient:
    def __init__(
        self,
        *,
        operation_timeout_sec: int = 20,
        read_timeout_sec: int = 30,
        deadline_sec: float = 60.0,
        max_shells_per_host: int = 5,
    ) -> None:
        if not read_timeout_sec > operation_timeout_sec >= 1:
            raise ValueError("need read_timeout_sec > operation_timeout_sec >= 1 (pywinrm's rule)")
        if deadline_sec <= 0 or max_shells_per_host < 1:
            raise ValueError("deadline_sec must be positive and max_shells_per_host at least 1")
        self.operation_timeout_sec = operation_timeout_sec
        self.read_timeout_sec = read_timeout_sec
        self.deadline_sec = deadline_sec
        self.max_shells_per_host = max_shells_per_host
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()
        # requests' `set_environ` (reached through pywinrm's proxy=None) sets no_proxy around each call and
        # deletes it afterwards when it was unset: concurrent calls then race into KeyError('no_proxy').
        # With the variable already set, requests restores it instead of deleting it.
        os.environ.setdefault("no_proxy", "*")

    # -- the port ------------------------------------------------------------------------------------
    def add_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        env = self._membership_env(host, "add_member", group, member)
        try:
            result = self._run(host, creds, "add_member", scripts.ADD_MEMBER, env)
        except _Ambiguous as amb:
            if self._reverify(host, creds, group, member) is True:
                return True
            raise amb.error from None
        changed = self._status(host, "add_member", result, {"added": True, "already_member": False})
        if not self.is_member(host, creds, group, member):
            raise RetryableWinRMError(host.key, "add_member", "host reported success but the member is not listed")
        return changed

    def remove_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        env = self._membership_env(host, "remove_member", group, member)
        try:
            result = self._run(host, creds, "remove_member", scripts.REMOVE_MEMBER, env)
        except _Ambiguous as amb:
            if self._reverify(host, creds, group, member) is False:
                return True
            raise amb.error from None
        outcomes = {"removed": True, "not_member": False, "principal_not_found": False}
        changed = self._status(host, "remove_member", result, outcomes)
        if self.is_member(host, creds, group, member):
            raise RetryableWinRMError(host.key, "remove_member", "host reported success but the member is listed")
        return changed

    def is_member(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool:
        env = self._membership_env(host, "is_member", group, member)
        result = self._run_plain(host, creds, "is_member", scripts.IS_MEMBER, env)
        outcomes = {"member": True, "not_member": False, "principal_not_found": False}
        return self._status(host, "is_member", result, outcomes)

    def list_sessions(self, host: HostEndpoint, creds: Credentials, member: str) -> list[LogonSession]:
        try:
            validate_member(member)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "list_sessions", exc.detail) from None
        env = {scripts.ENV_MEMBER: member}
        result = self._run_plain(host, creds, "list_sessions", scripts.LIST_SESSIONS, env)
        self._status(host, "list_sessions", result, {"ok": True})
        rows = result.get("sessions") or []
        if isinstance(rows, dict):  # ConvertTo-Json may unwrap a one-element array
            rows = [rows]
        return [
            LogonSession(str(r.get("id", "")), str(r.get("user", "")), str(r.get("state", "")),
                         str(r["logon_time"]) if r.get("logon_time") else None)
            for r in rows if isinstance(r, dict)
        ]

    def logoff(self, host: HostEndpoint, creds: Credentials, session_id: str) -> None:
        try:
            validate_session_id(session_id)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "logoff", exc.detail) from None
        env = {scripts.ENV_SESSION_ID: session_id}
        result = self._run_plain(host, creds, "logoff", scripts.LOGOFF, env)
        self._status(host, "logoff", result, {"logged_off": True, "no_session": False})

    # -- plumbing ------------------------------------------------------------------------------------
    @staticmethod
    def _membership_env(host: HostEndpoint, operation: str, group: str, member: str) -> dict[str, str]:
        try:
            kind, group_id = validate_group(group)
            validate_member(member)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, operation, exc.detail) from None
        return {scripts.ENV_GROUP_KIND: kind, scripts.ENV_GROUP: group_id, scripts.ENV_MEMBER: member}

    def _slot(self, host: HostEndpoint) -> threading.BoundedSemaphore:
        with self._slots_lock:
            slot = self._slots.get(host.key)
            if slot is None:
                slot = self._slots[host.key] = threading.BoundedSemaphore(self.max_shells_per_host)
            return slot

    def _run(self, host: HostEndpoint, creds: Credentials, operation: str, script: str,
             env: dict[str, str]) -> dict[str, Any]:
        """Run a script; a failure after the command was sent raises _Ambiguous."""
        deadline = time.monotonic() + self.deadline_sec
        slot = self._slot(host)
        if not slot.acquire(timeout=self.deadline_sec):
            raise RetryableWinRMError(host.key, operation, "no free shell slot for this host before the deadline")
        try:
            output = run_script(host, creds, script, env, operation_timeout_sec=self.operation_timeout_sec,
                                read_timeout_sec=self.read_timeout_sec, deadline=deadline)
        except ScriptRunFailed as failed:
            error = classify(failed.cause, host.key, operation, creds.password)
            if failed.command_sent:
                raise _Ambiguous(error) from None
            raise error from None
        finally:
            slot.release()
        try:
            return scripts.parse_result(output.stdout)
        except ValueError:
            stderr = _clean_stderr(output.stderr)
            detail = f"script exited {output.rc} without a result line; stderr: {stderr[:300]}"
            raise PermanentWinRMError(host.key, operation, detail.replace(creds.password, "***")) from None

    def _run_plain(self, host: HostEndpoint, creds: Credentials, operation: str, script: str,
                   env: dict[str, str]) -> dict[str, Any]:
        try:
            return self._run(host, creds, operation, script, env)
        except _Ambiguous as amb:
            raise amb.error from None

    def _reverify(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> bool | None:
        try:
            return self.is_member(host, creds, group, member)
        except WinRMError:
            return None

    @staticmethod
    def _status(host: HostEndpoint, operation: str, result: dict[str, Any], outcomes: dict[str, bool]) -> bool:
        status = result["status"]
        if status in outcomes:
            return outcomes[status]
        detail = f"{status}: {result.get('error_id', '')} {result.get('message', '')}".strip()
        if status == "group_not_found":
            raise GroupNotFoundError(host.key, operation, detail)
        if status == "principal_not_found":
            raise PrincipalNotFoundError(host.key, operation, detail)
        if status == "access_denied":
            raise AccessDeniedError(host.key, operation, detail)
        raise PermanentWinRMError(host.key, operation, detail)


def _clean_stderr(stderr: bytes) -> str:
    text = stderr.decode("utf-8", errors="replace")
    if text.startswith("#< CLIXML"):
        parts = re.findall(r'<S S="Error">(.*?)</S>', text, flags=re.S)
        text = "".join(parts).replace("_x000D__x000A_", " ")
    return " ".join(text.split())
