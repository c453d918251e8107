"""`jitctl revoke` and `jitctl revocations`: the operator's way out of an elevation or a stuck revocation.

`jitctl revoke ID --as USER --reason TEXT` publishes `elevation.revoke_requested`; the reaper ends
the elevation, audited with the operator and the reason.

`jitctl revoke ID --force --as USER --reason TEXT` closes a *stalled* revocation by hand, but only
once the host has been asked again: not a member -> REVOKED; still a member -> one removal, then
REVOKED if the host confirms; unreachable or refusing -> nothing is marked and the command fails.
There is no override: a PAM product must not call "revoked" what it cannot see is revoked (a host
that is gone for good stays listed as stalled; see docs/reaper.md).

`jitctl revocations [--stalled] [--json]` lists revocations still in progress (or only the stalled ones).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from sqlalchemy import select

from jitctl.common import CliError, database, load_settings, print_json, print_table, publish
from jitctl.decide import POLL_SECONDS, add_wait
from jitctl.identity import check_as
from services.reaper.main import winrm_port
from services.reaper.plan import make_plan
from services.reaper.revocation import Revoker
from shared.cli import OK, TIMED_OUT, USAGE
from shared.clock import SystemClock
from shared.db.engine import transaction
from shared.db.models import Request, User
from shared.db.targets import TargetError
from shared.db.transitions import Cause, load
from shared.events import BadEvent, new_event
from shared.settings import Settings
from shared.states import ACTIVE, TERMINAL, State
from shared.winrm import WinRMError, WinRMPort

SOURCE = "jitctl"
COLUMNS = ["request_id", "host", "account", "attempts", "last_error", "since", "stalled_at", "next_attempt_at"]


def register(subparsers: Any) -> None:
    revoke = subparsers.add_parser("revoke", help="end an elevation now, or (--force) close a stalled revocation "
                                   "after the host confirms the account is out")
    revoke.add_argument("request_id")
    revoke.add_argument("--as", dest="operator", required=True, metavar="USER", help="the operator's user id")
    revoke.add_argument("--reason", required=True, help="why; kept in the audit trail")
    revoke.add_argument("--force", action="store_true",
                        help="for a stalled revocation: ask the host once more and mark it revoked if it confirms")
    add_wait(revoke, "the request to end (REVOKED or FAILED)")
    revoke.add_argument("--json", action="store_true", help="print the result as JSON")
    revoke.set_defaults(func=run)
    listing = subparsers.add_parser("revocations", help="revocations in progress (REVOKING), oldest first")
    listing.add_argument("--stalled", action="store_true", help="only those past the stall threshold")
    listing.add_argument("--json", action="store_true", help="a JSON list of objects")
    listing.set_defaults(func=run)


def run(args: argparse.Namespace, port: WinRMPort | None = None) -> int:
    settings = load_settings()
    if args.command == "revocations":
        return list_revocations(settings, stalled=args.stalled, as_json=args.json)
    if not args.reason.strip():
        raise CliError("--reason must say why (it is kept in the audit trail)", USAGE)
    if args.force:
        return force(settings, args.request_id, args.operator, args.reason, port or winrm_port(settings),
                     as_json=getattr(args, "json", False))
    return request_revoke(settings, args.request_id, args.operator, args.reason, wait=args.wait,
                          as_json=getattr(args, "json", False))


def _check(settings: Settings, request_id: str, operator: str) -> Request:
    with database(settings) as factory, transaction(factory) as session:
        if session.get(User, operator) is None:
            raise CliError(f"unknown user {operator!r}: --as must name a configured user")
        check_as(settings, session, operator, "elevation.revoke_requested")
        request = load(session, request_id)
        if request is None:
            raise CliError(f"no request {request_id!r}")
        return request


def request_revoke(settings: Settings, request_id: str, operator: str, reason: str, *, wait: float | None = None,
                   as_json: bool = False) -> int:
    request = _check(settings, request_id, operator)
    if State(request.state) not in ACTIVE:
        raise CliError(f"request {request_id} has already ended ({request.state}); nothing to revoke")
    try:
        event = new_event("elevation.revoke_requested", {"request_id": request_id, "operator_id": operator,
                                                         "reason": reason}, source=SOURCE)
    except BadEvent as exc:
        raise CliError(f"invalid request: {exc}", 2) from None
    publish(settings, [event])
    result: dict[str, Any] = {"published": event.type, "event_id": event.id, "request_id": request_id}
    code = OK
    if wait is not None:
        state = wait_until_ended(settings, request_id, wait)
        result |= {"outcome": state.lower() if state else "timeout"}
        code = OK if state else TIMED_OUT
    if as_json:
        print_json(result)
        return code
    print(f"published elevation.revoke_requested {event.id}: the reaper will end {request_id} "
          f"({request.state}); follow it with `jitctl audit --request {request_id}`")
    if wait is not None:
        print(f"{request_id}: {result['outcome']}" + ("" if code == OK else f" (not ended within {wait:g} s: is "
                                                                          "jit-reaper running?)"))
    return code


def wait_until_ended(settings: Settings, request_id: str, seconds: float) -> str | None:
    """The request's final state (REVOKED, FAILED...), or None if it has not ended within `seconds`."""
    deadline = time.monotonic() + seconds
    with database(settings) as factory:
        while True:
            with factory() as session:
                row = load(session, request_id)
            if row is not None and State(row.state) in TERMINAL:
                return row.state
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS)


def force(settings: Settings, request_id: str, operator: str, reason: str, port: WinRMPort, *,
          as_json: bool = False) -> int:
    request = _check(settings, request_id, operator)
    if request.state != State.REVOKING.value or request.stalled_at is None:
        raise CliError(f"request {request_id} is {request.state}"
                       f"{'' if request.state != State.REVOKING.value else ', not stalled'}: --force only closes "
                       "a stalled revocation (see `jitctl revocations --stalled`)")
    with database(settings) as factory:
        with transaction(factory) as session:
            fresh = load(session, request_id)
            assert fresh is not None
            try:
                plan = make_plan(session, fresh)
            except TargetError as exc:
                raise CliError(f"cannot reach the host of {request_id}: {exc}; nothing was marked") from None
        revoker = Revoker(factory, port, settings, SystemClock())
        try:
            outcome = revoker.remove_once(plan)
        except (WinRMError, TargetError) as exc:
            raise CliError(f"{plan.host} did not confirm that {plan.account} is out of {plan.group} ({exc}); "
                           "nothing was marked and the reaper keeps retrying") from None
        host_said = plan.keep or ("removed" if outcome.removed else "not a member")
        done = revoker.finish(plan, outcome, tries=1, cause=Cause(actor=operator, reason=reason),
                              extra={"forced": True, "host_said": host_said})
    if not done:
        if as_json:
            print_json({"request_id": request_id, "marked": None, "host_said": host_said})
        else:
            print(f"{request_id} was not marked: it had already ended, or an elevator's add may still land "
                  f"(see `jitctl audit --request {request_id}`)")
        return 0
    marked = "FAILED" if plan.failed else "REVOKED"
    if as_json:
        print_json({"request_id": request_id, "marked": marked, "host_said": host_said})
    else:
        print(f"{request_id} marked {marked} by {operator}: host said {host_said}")
    return 0


def list_revocations(settings: Settings, *, stalled: bool, as_json: bool) -> int:
    query = select(Request).where(Request.state == State.REVOKING.value).order_by(Request.revoking_since)
    if stalled:
        query = query.where(Request.stalled_at.is_not(None))
    with database(settings) as factory, transaction(factory) as session:
        rows = [{"request_id": r.id, "host": r.host, "account": r.account, "group": r.group,
                 "attempts": r.attempts, "last_error": r.last_error, "since": r.revoking_since,
                 "stalled_at": r.stalled_at, "next_attempt_at": r.next_attempt_at, "trigger": r.end_trigger}
                for r in session.scalars(query)]
    if as_json:
        print_json(rows)
    elif rows:
        print_table(rows, COLUMNS)
    else:
        print("no stalled revocations" if stalled else "no revocations in progress")
    return 0
