"""The elevator's WinRM work, always outside any database transaction: look, then add (or not), with retries.

A membership we did not grant is not ours to take away: before adding we ask the host whether the
account is already in the group. If it is and no other active elevation of ours explains it, the
membership is pre-existing and we leave it alone (no add, and the reaper will not remove it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from shared import logs
from shared.db.targets import Target, TargetError
from shared.retrying import call, retrying
from shared.settings import Settings
from shared.winrm import Credentials, WinRMError, WinRMPort

T = TypeVar("T")

log = logs.get_logger()


class RequestView(Protocol):
    """What the host work needs to know of its request, each read in a short transaction of its own."""

    def holders(self) -> list[tuple[str, bool]]:
        """(id, pre_existing) of the other active requests for the same account, group and host."""
        ...

    def still_elevating(self) -> bool: ...


@dataclass(frozen=True)
class Outcome:
    """What the host work came to. `added`: an add_member call was made, so the account may be a member."""

    error: str | None = None
    added: bool = False
    changed: bool = False
    pre_existing: bool = False
    holders: tuple[str, ...] = ()  # other active requests that explain a membership found in place


class Membership:
    def __init__(self, port: WinRMPort, settings: Settings, *, environ: Mapping[str, str] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._port = port
        self._settings = settings
        self._environ = environ
        self._sleep = sleep

    def elevate(self, target: Target, budget: float, request: RequestView) -> Outcome:
        """Make the account a member of the group, unless it already is; never raises for host trouble.

        Before each add attempt the request must still be ELEVATING: once a check-in or expiry has
        ended it, no add is sent (not even a retry), which keeps the window for compensation small.
        """
        deadline = time.monotonic() + budget
        sent: list[bool] = []  # one entry per add_member call made: the account may be a member since

        def add() -> bool | None:
            if not request.still_elevating():
                return None
            sent.append(True)
            return self._port.add_member(target.endpoint, creds, target.group, target.account)

        try:
            creds = target.credentials(self._environ)
            if self._call(lambda: self._is_member(target, creds), deadline):
                holders = request.holders()
                # Only a holder whose membership we granted explains it; one that found it pre-existing doesn't.
                pre_existing = all(was_there for _, was_there in holders)
                if pre_existing:
                    log.info("elevation.pre_existing", account=target.account, group=target.group)
                return Outcome(pre_existing=pre_existing, holders=tuple(h for h, _ in holders))
            changed = self._call(add, deadline)
            if changed is None:
                log.info("elevation.add.skipped", reason="request ended before the add", adds_sent=len(sent))
            return Outcome(added=bool(sent), changed=bool(changed))
        except TargetError as exc:
            return Outcome(error=f"add {target.account} to {target.group} on {target.endpoint.address}: {exc}")
        except WinRMError as exc:
            note = f" (gave up after retrying for {budget:.1f} s)" if exc.retryable else ""
            return Outcome(error=f"{exc}{note}", added=bool(sent))

    def remove(self, target: Target, budget: float) -> bool:
        """Remove the account from the group (verified by the adapter); True if it was a member. Raises."""
        creds = target.credentials(self._environ)
        return self._call(lambda: self._port.remove_member(target.endpoint, creds, target.group, target.account),
                          time.monotonic() + budget)

    def _is_member(self, target: Target, creds: Credentials) -> bool:
        return self._port.is_member(target.endpoint, creds, target.group, target.account)

    def _call(self, fn: Callable[[], T], deadline: float) -> T:
        def on_retry(attempt: int, error: BaseException, seconds: float) -> None:
            log.warning("winrm.call.retrying", attempt=attempt, error=str(error), sleep_seconds=round(seconds, 3))

        policy = retrying(initial=self._settings.retry_initial_seconds, cap=self._settings.retry_max_seconds,
                          budget=deadline - time.monotonic(), on_retry=on_retry, sleep=self._sleep)
        return call(fn, policy)
