"""MembershipClient: the real WinRM adapter (pywinrm Protocol API) behind :class:`WinRMPort`.

Every call validates its data first (:mod:`.names`), passes it only as base64 data inside a fixed
script (:mod:`.scripts`), holds one of ``max_shells_per_host`` slots for the host while it runs on a
pooled connection and shell (:mod:`.pool`), and maps failures to Retryable/PermanentWinRMError
(:mod:`.classify`).

One run per operation: ``elevate_known`` (an account whose SID a grant learnt before: check the name still
maps to it, read, add, verify) and ``revoke`` (remove, verify, list and optionally log off the account's
sessions) each do in one PowerShell run what the single-step calls do in two or three.

Membership is by SID: ``resolve`` turns a name into the account's SID once; ``add_member`` and
``remove_member`` change the group by SID and, in the same PowerShell run, list the group's SIDs to
verify the end state (one run per change). ``is_member`` is a listing, never a name lookup.

Ambiguity: if a change fails after its Command was sent (read timeout, dropped connection,
deadline...), the script may have run. The client then lists the group: if the wanted end state
holds it returns True (it cannot tell whether this call or an earlier one made the change, and True
is the safe answer for the caller's bookkeeping); otherwise, or if the listing fails too, it raises
the original error.

Deadline: one call (slot wait, every HTTP request, the re-verification) ends within ``deadline_sec``;
only the shell's cleanup may run on, for at most ``CLEANUP_GRACE_SEC``. ``max_call_seconds`` is the
bound a caller may rely on: after it, the call has returned and nothing it sent can still land.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

from shared.sids import is_sid

from . import scripts
from .classify import classify
from .endpoint import (
    Credentials,
    EndedSession,
    GroupMember,
    HostEndpoint,
    KnownElevation,
    LogonSession,
    Resolved,
    Revocation,
)
from .errors import (
    AccessDeniedError,
    GroupNotFoundError,
    InvalidNameError,
    PermanentWinRMError,
    PrincipalNotFoundError,
    RetryableWinRMError,
    WinRMError,
)
from .names import (
    validate_group,
    validate_group_sid,
    validate_member,
    validate_member_sid,
    validate_session_id,
)
from .pool import ShellPool
from .shell import CLEANUP_GRACE_SEC, ScriptRunFailed

# What a call may take beyond deadline_sec: the cleanup grace plus scheduling noise.
DEADLINE_SLACK_SEC = CLEANUP_GRACE_SEC + 1.0


class _Ambiguous(Exception):
    def __init__(self, error: WinRMError) -> None:
        super().__init__(str(error))
        self.error = error


class MembershipClient:
    deadline_slack_sec = DEADLINE_SLACK_SEC

    def __init__(
        self,
        *,
        operation_timeout_sec: int = 20,
        read_timeout_sec: int = 30,
        deadline_sec: float = 60.0,
        max_shells_per_host: int = 5,
        pool_idle_sec: float = 30.0,
    ) -> None:
        if not read_timeout_sec > operation_timeout_sec >= 1:
            raise ValueError("need read_timeout_sec > operation_timeout_sec >= 1 (pywinrm's rule)")
        if deadline_sec <= 0 or max_shells_per_host < 1 or pool_idle_sec < 0:
            raise ValueError("deadline_sec must be positive, max_shells_per_host at least 1, pool_idle_sec >= 0")
        self.pool = ShellPool(operation_timeout_sec=operation_timeout_sec, read_timeout_sec=read_timeout_sec,
                              idle_sec=pool_idle_sec, max_per_host=max_shells_per_host)
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

    @property
    def max_call_seconds(self) -> float:
        """Upper bound of one call's duration (from entry to return), verification included: when it has
        passed, the call has returned and no request it sent is still in flight."""
        return self.deadline_sec + self.deadline_slack_sec

    # -- the port ------------------------------------------------------------------------------------
    def resolve(self, host: HostEndpoint, creds: Credentials, group: str, member: str) -> Resolved:
        try:
            kind, group_id = validate_group(group)
            validate_member(member)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "resolve", exc.detail) from None
        env = {scripts.ENV_GROUP_KIND: kind, scripts.ENV_GROUP: group_id, scripts.ENV_MEMBER: member}
        result = self._run_plain(host, creds, "resolve", scripts.RESOLVE, env, self._deadline())
        self._status(host, "resolve", result, {"ok": True})
        sid, group_sid = str(result.get("sid", "")).upper(), str(result.get("group_sid", "")).upper()
        listed = result.get("member")
        if not is_sid(sid) or not is_sid(group_sid) or not isinstance(listed, bool):
            raise PermanentWinRMError(host.key, "resolve", f"unexpected answer: {str(result)[:300]}")
        return Resolved(sid, str(result.get("name") or ""), str(result.get("class") or ""), group_sid, listed)

    def add_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        env = self._sid_env(host, "add_member", group_sid, member_sid)
        deadline = self._deadline()
        try:
            result = self._run(host, creds, "add_member", scripts.ADD_MEMBER_SID, env, deadline)
        except _Ambiguous as amb:
            if self._reverify(host, creds, env, deadline) is True:
                return True
            raise amb.error from None
        changed = self._status(host, "add_member", result, {"added": True, "already_member": False})
        if result.get("member") is not True:
            raise RetryableWinRMError(host.key, "add_member", "verify disagreed: the group does not list the SID")
        return changed

    def remove_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        env = self._sid_env(host, "remove_member", group_sid, member_sid)
        deadline = self._deadline()
        try:
            result = self._run(host, creds, "remove_member", scripts.REMOVE_MEMBER_SID, env, deadline)
        except _Ambiguous as amb:
            if self._reverify(host, creds, env, deadline) is False:
                return True
            raise amb.error from None
        changed = self._status(host, "remove_member", result, {"removed": True, "not_member": False})
        if result.get("member") is not False:
            raise RetryableWinRMError(host.key, "remove_member", "verify disagreed: the group still lists the SID")
        return changed

    def elevate_known(self, host: HostEndpoint, creds: Credentials, group_sid: str, member: str,
                      member_sid: str) -> KnownElevation:
        env = self._sid_env(host, "elevate_known", group_sid, member_sid)
        try:
            validate_member(member)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "elevate_known", exc.detail) from None
        env[scripts.ENV_MEMBER] = member
        deadline = self._deadline()
        try:
            result = self._run(host, creds, "elevate_known", scripts.ELEVATE_KNOWN, env, deadline)
        except _Ambiguous as amb:
            if self._reverify(host, creds, env, deadline) is True:
                return KnownElevation(changed=True)
            raise amb.error from None
        if result["status"] == "sid_changed":
            sid = str(result.get("sid", "")).upper()
            if not is_sid(sid):
                raise PermanentWinRMError(host.key, "elevate_known", f"unexpected answer: {str(result)[:300]}")
            return KnownElevation(sid_changed=sid)
        changed = self._status(host, "elevate_known", result, {"added": True, "already_member": False})
        if result.get("member") is not True:
            raise RetryableWinRMError(host.key, "elevate_known", "verify disagreed: the group does not list the SID")
        was = result.get("was_member")
        return KnownElevation(changed=changed, was_member=was if isinstance(was, bool) else None)

    def revoke(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str, member: str,
               logoff: bool) -> Revocation:
        env = self._sid_env(host, "revoke", group_sid, member_sid)
        try:
            validate_member(member)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "revoke", exc.detail) from None
        env.update({scripts.ENV_MEMBER: member, scripts.ENV_LOGOFF: "1" if logoff else "0"})
        deadline = self._deadline()
        try:
            result = self._run(host, creds, "revoke", scripts.REVOKE, env, deadline)
        except _Ambiguous as amb:
            if self._reverify(host, creds, env, deadline) is False:
                return Revocation(removed=True, sessions_listed=False)
            raise amb.error from None
        removed = self._status(host, "revoke", result, {"removed": True, "not_member": False})
        if result.get("member") is not False:
            raise RetryableWinRMError(host.key, "revoke", "verify disagreed: the group still lists the SID")
        sessions = tuple(
            EndedSession(LogonSession(str(r.get("id", "")), str(r.get("user", "")), str(r.get("state", "")),
                                      str(r["logon_time"]) if r.get("logon_time") else None),
                         "logged_off" if r.get("action") == "logged_off" else "reported")
            for r in _rows(result.get("sessions")))
        error = str(result.get("sessions_error") or "") or None
        return Revocation(removed=removed, sessions=sessions, sessions_error=error)

    def close(self) -> None:
        """Close every pooled shell and connection (Delete on each host)."""
        self.pool.close()

    def list_members(self, host: HostEndpoint, creds: Credentials, group_sid: str) -> list[GroupMember]:
        try:
            group_sid = validate_group_sid(group_sid)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "list_members", exc.detail) from None
        return self._list(host, creds, "list_members", group_sid, self._deadline())

    def is_member(self, host: HostEndpoint, creds: Credentials, group_sid: str, member_sid: str) -> bool:
        env = self._sid_env(host, "is_member", group_sid, member_sid)
        members = self._list(host, creds, "is_member", env[scripts.ENV_GROUP_SID], self._deadline())
        return any(m.sid == env[scripts.ENV_MEMBER_SID] for m in members)

    def list_sessions(self, host: HostEndpoint, creds: Credentials, member: str) -> list[LogonSession]:
        try:
            validate_member(member)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "list_sessions", exc.detail) from None
        env = {scripts.ENV_MEMBER: member}
        result = self._run_plain(host, creds, "list_sessions", scripts.LIST_SESSIONS, env, self._deadline())
        self._status(host, "list_sessions", result, {"ok": True})
        return [
            LogonSession(str(r.get("id", "")), str(r.get("user", "")), str(r.get("state", "")),
                         str(r["logon_time"]) if r.get("logon_time") else None)
            for r in _rows(result.get("sessions"))
        ]

    def logoff(self, host: HostEndpoint, creds: Credentials, session_id: str) -> None:
        try:
            validate_session_id(session_id)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, "logoff", exc.detail) from None
        env = {scripts.ENV_SESSION_ID: session_id}
        result = self._run_plain(host, creds, "logoff", scripts.LOGOFF, env, self._deadline())
        self._status(host, "logoff", result, {"logged_off": True, "no_session": False})

    # -- plumbing ------------------------------------------------------------------------------------
    def _deadline(self) -> float:
        return time.monotonic() + self.deadline_sec

    @staticmethod
    def _sid_env(host: HostEndpoint, operation: str, group_sid: str, member_sid: str) -> dict[str, str]:
        try:
            group = validate_group_sid(group_sid)
            member = validate_member_sid(member_sid)
        except InvalidNameError as exc:
            raise InvalidNameError(host.key, operation, exc.detail) from None
        return {scripts.ENV_GROUP_SID: group, scripts.ENV_MEMBER_SID: member}

    def _list(self, host: HostEndpoint, creds: Credentials, operation: str, group_sid: str,
              deadline: float) -> list[GroupMember]:
        env = {scripts.ENV_GROUP_SID: group_sid}
        result = self._run_plain(host, creds, operation, scripts.LIST_MEMBERS, env, deadline)
        self._status(host, operation, result, {"ok": True})
        members = []
        for row in _rows(result.get("members")):
            sid = str(row.get("sid") or "").upper()
            if not is_sid(sid):
                raise PermanentWinRMError(host.key, operation, f"a member without a SID: {str(row)[:200]}")
            members.append(GroupMember(sid, str(row.get("name") or ""), str(row.get("class") or "")))
        return members

    def _slot(self, host: HostEndpoint) -> threading.BoundedSemaphore:
        with self._slots_lock:
            slot = self._slots.get(host.key)
            if slot is None:
                slot = self._slots[host.key] = threading.BoundedSemaphore(self.max_shells_per_host)
            return slot

    def _run(self, host: HostEndpoint, creds: Credentials, operation: str, script: str,
             env: dict[str, str], deadline: float) -> dict[str, Any]:
        """Run a script by ``deadline`` (time.monotonic()); a failure after the command was sent raises _Ambiguous."""
        slot = self._slot(host)
        left = deadline - time.monotonic()
        if left <= 0 or not slot.acquire(timeout=left):
            raise RetryableWinRMError(host.key, operation, "no free shell slot for this host before the deadline")
        try:
            output = self.pool.run(host, creds, scripts.render(script, env), deadline)
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
                   env: dict[str, str], deadline: float) -> dict[str, Any]:
        try:
            return self._run(host, creds, operation, script, env, deadline)
        except _Ambiguous as amb:
            raise amb.error from None

    def _reverify(self, host: HostEndpoint, creds: Credentials, env: dict[str, str], deadline: float) -> bool | None:
        """Whether the group lists the SID now, asked within the same deadline; None if that fails too."""
        try:
            members = self._list(host, creds, "verify", env[scripts.ENV_GROUP_SID], deadline)
        except WinRMError:
            return None
        return any(m.sid == env[scripts.ENV_MEMBER_SID] for m in members)

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


def _rows(value: Any) -> list[dict[str, Any]]:
    """A JSON array of objects as ConvertTo-Json writes it (it may unwrap a one-element array)."""
    if isinstance(value, dict):
        value = [value]
    return [r for r in (value or []) if isinstance(r, dict)]


def _clean_stderr(stderr: bytes) -> str:
    text = stderr.decode("utf-8", errors="replace")
    if text.startswith("#< CLIXML"):
        parts = re.findall(r'<S S="Error">(.*?)</S>', text, flags=re.S)
        text = "".join(parts).replace("_x000D__x000A_", " ")
    return " ".join(text.split())
