"""`jitctl extend`: ask for more time on an active elevation, or decide an extension someone asked for.

`jitctl extend ID --as USER --seconds N --justification TEXT` publishes `elevation.extend_requested`
exactly as the connection workflow would (jit-approval accepts it only from the request's requester);
the task says whether it is refused, automatic or needs approval. `jitctl extend ID --approve EXT --as
USER` and `--deny EXT --as USER --reason TEXT` publish `elevation.decided` for that extension. Every
outcome is in the audit trail (`jitctl audit --request ID`) and published (`elevation.extended`,
`elevation.extension_denied`).
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from jitctl.common import CliError, database, load_settings, print_json, publish
from jitctl.identity import check_as
from shared.db.models import Extension, Request, User
from shared.events import BadEvent, Event, new_event
from shared.settings import Settings
from shared.states import EXPIRABLE, State

SOURCE = "jitctl"
USAGE = 2


def register(subparsers: Any) -> None:
    extend = subparsers.add_parser("extend", help="ask for more time on an active elevation, or approve/deny an "
                                                  "extension (--approve/--deny EXTENSION_ID)")
    extend.add_argument("request_id")
    extend.add_argument("--as", dest="user", required=True, metavar="USER",
                        help="the requester asking for time, or the approver deciding")
    extend.add_argument("--seconds", type=int, help="how much more time, counted from the current end of the window")
    extend.add_argument("--justification", help="why more time is needed (kept in the audit trail)")
    extend.add_argument("--extension-id", help="the new extension's id (default: generated)")
    extend.add_argument("--approve", metavar="EXTENSION_ID", help="approve this extension of the request")
    extend.add_argument("--deny", metavar="EXTENSION_ID", help="deny this extension of the request (with --reason)")
    extend.add_argument("--reason", help="why an extension is denied")
    extend.add_argument("--json", action="store_true", help="print what was published as JSON")
    extend.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.approve and args.deny:
        raise CliError("give --approve or --deny, not both", USAGE)
    _check(settings, args)
    try:
        event = _decision(args) if args.approve or args.deny else _ask(args)
    except BadEvent as exc:
        raise CliError(f"invalid extension: {exc}", USAGE) from None
    publish(settings, [event])
    data = event.data.model_dump(mode="json", exclude_none=True)
    if args.json:
        print_json({"published": event.type, "event_id": event.id, **data})
    else:
        print(f"published {event.type} {event.id} for extension {data['extension_id']} of {args.request_id}; "
              f"follow it with `jitctl audit --request {args.request_id}`")
    return 0


def _ask(args: argparse.Namespace) -> Event:
    if args.seconds is None or not (args.justification or "").strip():
        raise CliError("asking for time needs --seconds N and --justification TEXT", USAGE)
    return new_event("elevation.extend_requested", {
        "request_id": args.request_id, "extension_id": args.extension_id or f"ext-{uuid.uuid4().hex[:12]}",
        "requester_id": args.user, "justification": args.justification, "duration_seconds": args.seconds,
    }, source=SOURCE)


def _decision(args: argparse.Namespace) -> Event:
    if args.deny and not (args.reason or "").strip():
        raise CliError("--deny needs --reason (it is kept in the audit trail)", USAGE)
    data = {"request_id": args.request_id, "approver_id": args.user, "decision": "approve" if args.approve else "deny",
            "extension_id": args.approve or args.deny}
    if args.deny:
        data["reason"] = args.reason
    return new_event("elevation.decided", data, source=SOURCE)


def _check(settings: Settings, args: argparse.Namespace) -> None:
    """Refuse here what jit-approval would refuse anyway, with a clearer message."""
    with database(settings) as factory, factory() as session:
        if session.get(User, args.user) is None:
            raise CliError(f"unknown user {args.user!r}: --as must name a configured user")
        check_as(settings, session, args.user,
                 "elevation.decided" if args.approve or args.deny else "elevation.extend_requested")
        request = session.get(Request, args.request_id)
        if request is None:
            raise CliError(f"no request {args.request_id!r}")
        if State(request.state) not in EXPIRABLE:
            raise CliError(f"request {args.request_id} is {request.state}; only an active elevation can be extended")
        decided = args.approve or args.deny
        if decided:
            ext = session.get(Extension, decided)
            if ext is None or ext.request_id != request.id:
                raise CliError(f"no extension {decided!r} of request {args.request_id}")
            if ext.state != "PENDING":
                raise CliError(f"extension {decided} is already {ext.state}")
