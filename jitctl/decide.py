"""`jitctl approve`, `jitctl deny` and `jitctl publish`: events of the contract, published with broker confirms."""

from __future__ import annotations

import argparse
import json
from typing import Any

from jitctl.common import CliError, load_settings, publish
from shared.events import EVENT_TYPES, BadEvent, new_event

SOURCE = "jitctl"


def register(subparsers: Any) -> None:
    approve = subparsers.add_parser("approve", help="publish an approver's approval (elevation.decided)")
    approve.add_argument("request_id")
    approve.add_argument("--as", dest="approver", required=True, metavar="USER", help="the approver's user id")
    approve.set_defaults(func=decide, decision="approve", reason=None)
    deny = subparsers.add_parser("deny", help="publish an approver's denial (elevation.decided)")
    deny.add_argument("request_id")
    deny.add_argument("--as", dest="approver", required=True, metavar="USER", help="the approver's user id")
    deny.add_argument("--reason", required=True, help="why; sent to the requester")
    deny.set_defaults(func=decide, decision="deny")
    pub = subparsers.add_parser("publish", help="publish one event of the contract (what upstream would send)")
    pub.add_argument("type", choices=EVENT_TYPES, metavar="TYPE", help=f"one of: {', '.join(EVENT_TYPES)}")
    pub.add_argument("--data", required=True, help="the event's data as a JSON object")
    pub.add_argument("--source", default=SOURCE, help="the CloudEvents source (default: jitctl)")
    pub.set_defaults(func=publish_one)


def decide(args: argparse.Namespace) -> int:
    data = {"request_id": args.request_id, "approver_id": args.approver, "decision": args.decision}
    if args.reason:
        data["reason"] = args.reason
    return _send("elevation.decided", data, SOURCE)


def publish_one(args: argparse.Namespace) -> int:
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise CliError(f"--data is not JSON: {exc}", 2) from None
    if not isinstance(data, dict):
        raise CliError("--data must be a JSON object", 2)
    return _send(args.type, data, args.source)


def _send(event_type: str, data: dict[str, Any], source: str) -> int:
    try:
        event = new_event(event_type, data, source=source)
    except BadEvent as exc:
        raise CliError(f"invalid event: {exc}", 2) from None
    publish(load_settings(), [event])
    print(f"published {event.type} {event.id}")
    return 0
