"""`jitctl approve`, `jitctl deny` and `jitctl publish`: events of the contract, checked, then published with
broker confirms.

A decision is checked before it leaves, by the rules jit-approval applies (the request exists and is
PENDING, the approver may decide it); `--wait` then follows the audit trail until jit-approval has
recorded the outcome of this very event. `publish` validates the event exactly as the daemons will.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from sqlalchemy import select

from jitctl.common import CliError, database, load_settings, print_json, printable, publish
from jitctl.identity import check_as
from shared.cli import OK, REFUSED, TIMED_OUT, USAGE
from shared.db.facts import user_facts
from shared.db.models import AuditEntry
from shared.db.transitions import load
from shared.events import DATA_MODELS, EVENT_TYPES, BadEvent, Event, new_event, parse_event
from shared.rules import check_approver
from shared.settings import Settings
from shared.states import State

SOURCE = "jitctl"
POLL_SECONDS = 0.2
WAIT_DEFAULT = 30.0


def add_wait(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", nargs="?", type=float, const=WAIT_DEFAULT, default=None, metavar="SECONDS",
                        help=f"wait for {what} (default {WAIT_DEFAULT:g} s) and exit 0 only if it is the one "
                             "asked for (3: it was not, 4: no outcome in time)")


def register(subparsers: Any) -> None:
    approve = subparsers.add_parser("approve", help="publish an approver's approval (elevation.decided)")
    approve.add_argument("request_id")
    approve.add_argument("--as", dest="approver", required=True, metavar="USER", help="the approver's user id")
    add_wait(approve, "jit-approval's outcome (approved, or the refusal and its reason)")
    approve.add_argument("--json", action="store_true", help="print the result as JSON")
    approve.set_defaults(func=decide, decision="approve", reason=None)
    deny = subparsers.add_parser("deny", help="publish an approver's denial (elevation.decided)")
    deny.add_argument("request_id")
    deny.add_argument("--as", dest="approver", required=True, metavar="USER", help="the approver's user id")
    deny.add_argument("--reason", required=True, help="why (not empty); sent to the requester")
    add_wait(deny, "jit-approval's outcome (denied, or the refusal and its reason)")
    deny.add_argument("--json", action="store_true", help="print the result as JSON")
    deny.set_defaults(func=decide, decision="deny")
    pub = subparsers.add_parser("publish", help="publish one event of the contract (what upstream would send)",
                                description="The event is validated exactly as the daemons validate it: an event "
                                            "jitctl publishes is never dead-lettered for its form.")
    pub.add_argument("type", choices=EVENT_TYPES, metavar="TYPE", help=f"one of: {', '.join(EVENT_TYPES)}")
    pub.add_argument("--data", default="-", metavar="JSON|@FILE|-",
                     help="the event's data: a JSON object, @FILE to read it from a file, or - (the default) "
                          "for standard input")
    pub.add_argument("--source", default=SOURCE, help="the CloudEvents source (default: jitctl)")
    pub.add_argument("--json", action="store_true", help="print the published event as JSON")
    pub.set_defaults(func=publish_one)


def decide(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.decision == "deny" and not (args.reason or "").strip():
        raise CliError("--reason must say why (it is sent to the requester)", USAGE)
    check_decision(settings, args.request_id, args.approver)
    data = {"request_id": args.request_id, "approver_id": args.approver, "decision": args.decision}
    if args.reason:
        data["reason"] = args.reason.strip()
    event = _send(settings, "elevation.decided", data, SOURCE)
    result: dict[str, Any] = {"published": event.type, "event_id": event.id, "request_id": args.request_id}
    code = OK
    if args.wait is not None:
        wanted = State.APPROVED if args.decision == "approve" else State.DENIED
        outcome = wait_for_decision(settings, event.id, args.wait)
        result |= outcome
        code = (TIMED_OUT if outcome["outcome"] == "timeout"
                else OK if outcome["outcome"] == wanted.value.lower() else REFUSED)
    _report(args, result)
    return code


def check_decision(settings: Settings, request_id: str, approver: str) -> None:
    """The checks jit-approval makes, made first: a decision that would be refused is not published."""
    with database(settings) as factory, factory() as session:
        request = load(session, request_id)
        if request is None:
            raise CliError(f"no request {request_id!r} (see `jitctl requests`)")
        if request.state != State.PENDING.value:
            raise CliError(f"request {request_id} is {request.state}: only a PENDING request can be decided")
        refusal = check_approver(approver, user_facts(session, approver), request.requester_id)
        if refusal is not None:
            raise CliError(f"{approver} may not decide {request_id}: {refusal}")
        check_as(settings, session, approver, "elevation.decided")


def wait_for_decision(settings: Settings, event_id: str, seconds: float) -> dict[str, Any]:
    """jit-approval's audit entry for this decision event: approved, denied, refused or ignored."""
    deadline = time.monotonic() + seconds
    with database(settings) as factory:
        while True:
            with factory() as session:
                entry = session.scalars(select(AuditEntry).where(AuditEntry.event_id == event_id)
                                        .order_by(AuditEntry.id.desc())).first()
            if entry is not None and entry.action != "decision.parked":
                if entry.action.startswith("decision."):
                    return {"outcome": entry.action.removeprefix("decision."), "reason": entry.reason}
                return {"outcome": (entry.to_state or "").lower(), "reason": entry.reason}
            if time.monotonic() >= deadline:
                return {"outcome": "timeout", "reason": f"no outcome recorded within {seconds:g} s: is jit-approval "
                                                        "running?"}
            time.sleep(POLL_SECONDS)


def publish_one(args: argparse.Namespace) -> int:
    text = read_data(args.data)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--data is not JSON: {exc}", USAGE) from None
    if not isinstance(data, dict):
        raise CliError("--data must be a JSON object", USAGE)
    known = set(DATA_MODELS[args.type].model_fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise CliError(f"invalid event: {args.type} has no field(s) {', '.join(unknown)}; its fields: "
                       f"{', '.join(sorted(known))}", USAGE)
    event = _send(load_settings(), args.type, data, args.source)
    _report(args, {"published": event.type, "event_id": event.id})
    return OK


def read_data(value: str) -> str:
    if value == "-":
        if sys.stdin.isatty():
            raise CliError("--data: give the JSON object, @FILE, or pipe it on standard input", USAGE)
        return sys.stdin.read()
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as file:
                return file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--data {value}: cannot read it ({getattr(exc, 'strerror', None) or exc})", USAGE) from None
    return value


def _send(settings: Settings, event_type: str, data: dict[str, Any], source: str) -> Event:
    try:
        event = new_event(event_type, data, source=source)
        # What every daemon does with the body: an event refused here would be dead-lettered there.
        parse_event(event.to_json(), max_bytes=settings.max_event_bytes, expected_types=(event_type,))
    except BadEvent as exc:
        raise CliError(f"invalid event: {exc}", USAGE) from None
    publish(settings, [event])
    return event


def _report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        print_json(result)
        return
    print(f"published {result['published']} {result['event_id']}")
    if "outcome" in result:
        reason = f" ({printable(result['reason'])})" if result["reason"] else ""
        print(f"{result['request_id']}: {result['outcome']}{reason}")
