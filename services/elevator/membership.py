"""The elevator's WinRM work, always outside any database transaction: resolve, hold, add, with retries.

One run when the account's SIDs are known from an earlier grant of it on this host: the claim's own
transaction took hold of that membership, then one PowerShell run checks the name still maps to that SID,
adds and verifies (`elevate_known`). If the name maps to another SID now, nothing was added: the hold is given back and
the grant goes the long way below. Otherwise (a first grant) two runs:

1. Resolve the account to its SID and the group to its SID on the host; refuse anything that is not a
   user account (a group, Everyone, Authenticated Users, Domain Users...).
2. Take hold of the membership in the ledger (a short transaction of its own, through `Grant`): the
   intent to add is durable before any add is sent. If the request ended meanwhile, nothing is sent.
3. Add by SID (already a member is success), verified by the adapter. Every attempt is sent only if it
   can return before the grant's `add_until`, which the reaper and the sweeper rely on.

A retried add first checks that the request is still ELEVATING (a short transaction); the first add
follows the hold at once, whose compare-and-set has just checked it. An add that lands after a check-in
anyway is safe: the hold keeps the membership ours until the add has returned (see the ledger).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from shared import logs
from shared.db.targets import Target, TargetError
from shared.retrying import call, retrying
from shared.settings import Settings
from shared.sids import account_refusal
from shared.winrm import PermanentWinRMError, WinRMError, WinRMPort
from shared.winrm.client import DEADLINE_SLACK_SEC
from shared.winrm.endpoint import KnownElevation, Resolved

T = TypeVar("T")

log = logs.get_logger()


class Grant(Protocol):
    """The request as the host work sees it; each call is a short transaction of its own."""

    def now(self) -> datetime: ...

    def take_hold(self, resolved: Resolved, looked_at: datetime) -> float | None:
        """Record the intent to add; returns the seconds left until the grant's add_until, or None if the
        request has ended (then no add may be sent). `looked_at`: when the resolve call started."""
        ...

    def still_elevating(self) -> bool: ...

    def known_hold(self) -> KnownHold | None:
        """The hold the claim took on the membership an earlier grant of this account learnt (its SIDs),
        before the one-run add; None when no SIDs are known (resolve first)."""
        ...

    def drop_known_hold(self, known: KnownHold) -> None:
        """The known SID is not the name's any more and nothing was added: undo the hold's effect."""
        ...


@dataclass(frozen=True)
class KnownHold:
    group_sid: str
    account_sid: str
    account_name: str
    seconds_left: float | None  # until the grant's add_until; None: the request ended, send nothing
    before: tuple[Any, ...]  # the membership's (baseline, ours, settled_at) before this hold
    decides_baseline: bool = False


@dataclass(frozen=True)
class Outcome:
    """What the host work came to. `added`: an add_member call was sent, so the account may be a member."""

    error: str | None = None
    resolved: Resolved | None = None
    held: bool = False
    added: bool = False
    changed: bool | None = None  # the add's answer: True put in, False already there, None no answer
    add_calls: int = 0


class Membership:
    def __init__(self, port: WinRMPort, settings: Settings, *, environ: Mapping[str, str] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._port = port
        self._settings = settings
        self._environ = environ
        self._sleep = sleep
        # The longest one WinRM call can take, slot wait and verification included (the adapter's bound).
        fallback = settings.winrm_deadline_seconds + DEADLINE_SLACK_SEC
        self._call_bound = float(getattr(port, "max_call_seconds", fallback))

    def elevate(self, target: Target, budget: float, grant: Grant) -> Outcome:
        """Make the account a member of the group; never raises for host trouble."""
        deadline = time.monotonic() + budget
        resolved: Resolved | None = None
        calls: list[bool] = []
        held = False
        try:
            creds = target.credentials(self._environ)
            known = grant.known_hold()
            if known is not None:
                held = known.seconds_left is not None
                resolved = Resolved(known.account_sid, known.account_name, "User", known.group_sid, False)
                outcome = self._elevate_known(target, creds, known, grant, deadline, calls)
                if outcome is not None:
                    return outcome
                held, resolved = False, None
            looked_at = grant.now()
            resolved = self._call(lambda: self._port.resolve(target.endpoint, creds, target.group, target.account),
                                  deadline)
            refusal = account_refusal(resolved.account_sid, resolved.object_class)
            if refusal is not None:
                return Outcome(error=f"refused to elevate {target.account} on {target.endpoint.address}: {refusal}",
                               resolved=resolved)
            seconds_left = grant.take_hold(resolved, looked_at)
            if seconds_left is None:
                log.info("elevation.add.skipped", reason="request ended before the add")
                return Outcome(resolved=resolved)
            held = True
            last_send = time.monotonic() + seconds_left - self._call_bound
            group_sid, account_sid = resolved.group_sid, resolved.account_sid

            def add() -> bool | None:
                if calls and not grant.still_elevating():
                    return None
                if time.monotonic() > last_send:
                    raise PermanentWinRMError(target.endpoint.key, "add_member",
                                              "no time left to add before the grant's add deadline")
                calls.append(True)
                return self._port.add_member(target.endpoint, creds, group_sid, account_sid)

            changed = self._call(add, deadline)
            if changed is None:
                log.info("elevation.add.skipped", reason="request ended before the add", adds_sent=len(calls))
            return Outcome(resolved=resolved, held=True, added=bool(calls), changed=changed, add_calls=len(calls))
        except TargetError as exc:
            return Outcome(error=f"add {target.account} to {target.group} on {target.endpoint.address}: {exc}",
                           resolved=resolved, held=held)
        except WinRMError as exc:
            note = f" (gave up after retrying for {budget:.1f} s)" if exc.retryable else ""
            return Outcome(error=f"{exc}{note}", resolved=resolved, held=held, added=bool(calls),
                           add_calls=len(calls))

    def _elevate_known(self, target: Target, creds: Any, known: KnownHold, grant: Grant, deadline: float,
                       calls: list[bool]) -> Outcome | None:
        """The one-run add of a known SID; None when the name maps to another SID now (resolve instead)."""
        resolved = Resolved(known.account_sid, known.account_name, "User", known.group_sid, False)
        if known.seconds_left is None:
            log.info("elevation.add.skipped", reason="request ended before the add")
            return Outcome(resolved=resolved)
        last_send = time.monotonic() + known.seconds_left - self._call_bound

        def add() -> KnownElevation | None:
            if calls and not grant.still_elevating():
                return None
            if time.monotonic() > last_send:
                raise PermanentWinRMError(target.endpoint.key, "elevate_known",
                                          "no time left to add before the grant's add deadline")
            calls.append(True)
            return self._port.elevate_known(target.endpoint, creds, known.group_sid, target.account,
                                            known.account_sid)

        answer = self._call(add, deadline)
        if answer is None:
            log.info("elevation.add.skipped", reason="request ended before the add", adds_sent=len(calls))
            return Outcome(resolved=resolved, held=True, added=bool(calls), changed=None, add_calls=len(calls))
        if answer.sid_changed is not None:
            log.warning("elevation.known_sid.changed", known_sid=known.account_sid, now_sid=answer.sid_changed)
            if len(calls) == 1:  # one definite answer: no add of this grant was ever carried out
                grant.drop_known_hold(known)
            calls.clear()
            return None
        return Outcome(resolved=resolved, held=True, added=True, changed=answer.changed, add_calls=len(calls))

    def _call(self, fn: Callable[[], T], deadline: float) -> T:
        def on_retry(attempt: int, error: BaseException, seconds: float) -> None:
            log.warning("winrm.call.retrying", attempt=attempt, error=str(error), sleep_seconds=round(seconds, 3))

        policy = retrying(initial=self._settings.retry_initial_seconds, cap=self._settings.retry_max_seconds,
                          budget=deadline - time.monotonic(), on_retry=on_retry, sleep=self._sleep)
        return call(fn, policy)
