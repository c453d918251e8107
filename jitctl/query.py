"""`jitctl requests`, `jitctl status` and `jitctl audit`: read-only views of the database."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import select

from jitctl.common import CliError, database, load_settings, print_json, print_table
from shared.db.facts import secret_facts, user_facts
from shared.db.models import AuditEntry, Request
from shared.rules import connection_status
from shared.states import ACTIVE, State

REQUEST_COLUMNS = ("request_id", "state", "secret_id", "checkout_id", "requester_id", "host", "approver_id",
                   "requested_at", "decided_at", "expires_at", "end_trigger", "reason")
AUDIT_COLUMNS = ("at", "request_id", "action", "from_state", "to_state", "actor", "event_id", "reason")


def register(subparsers: Any) -> None:
    requests = subparsers.add_parser("requests", help="requests with state, requester, approver, times")
    requests.add_argument("--state", type=str.upper, choices=[s.value for s in State], help="only this state")
    requests.add_argument("--json", action="store_true")
    requests.set_defaults(func=list_requests)
    status = subparsers.add_parser("status", help="the connection workflow's elevation status (contract section 4)")
    status.add_argument("--secret", required=True, help="secret id")
    status.add_argument("--user", required=True, help="requester's user id")
    status.add_argument("--checkout", help="checkout id (default: the user's latest active request for the secret)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=show_status)
    audit = subparsers.add_parser("audit", help="the append-only audit trail")
    audit.add_argument("--request", help="only this request")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=show_audit)


def request_dict(row: Request) -> dict[str, Any]:
    return {"request_id": row.id, "state": row.state, "secret_id": row.secret_id, "checkout_id": row.checkout_id,
            "requester_id": row.requester_id, "host": row.host, "approver_id": row.approver_id,
            "task_id": row.task_id, "account": row.account, "group": row.group, "requested_at": row.requested_at,
            "decided_at": row.decided_at, "expires_at": row.expires_at, "elevated_at": row.elevated_at,
            "ended_at": row.ended_at, "end_trigger": row.end_trigger, "reason": row.reason}


def list_requests(args: argparse.Namespace) -> int:
    with database(load_settings()) as factory, factory() as session:
        stmt = select(Request).order_by(Request.requested_at, Request.id)
        if args.state:
            stmt = stmt.where(Request.state == args.state)
        rows = [request_dict(r) for r in session.scalars(stmt)]
    if args.json:
        print_json(rows)
    else:
        print_table(rows, REQUEST_COLUMNS)
    return 0


def show_status(args: argparse.Namespace) -> int:
    with database(load_settings()) as factory, factory() as session:
        stmt = (select(Request.state).where(Request.secret_id == args.secret, Request.requester_id == args.user,
                                            Request.state.in_([s.value for s in ACTIVE]))
                .order_by(Request.requested_at.desc()))
        if args.checkout:
            stmt = stmt.where(Request.checkout_id == args.checkout)
        state = session.scalars(stmt).first()
        answer = connection_status(args.secret, secret_facts(session, args.secret), args.user,
                                   user_facts(session, args.user), state)
    if args.json:
        print_json({"status": answer.status.value, "action": answer.action, "reason": answer.reason})
    else:
        print(f"{answer.status.value}: {answer.action}\n  ({answer.reason})")
    return 0


def show_audit(args: argparse.Namespace) -> int:
    with database(load_settings()) as factory, factory() as session:
        stmt = select(AuditEntry).order_by(AuditEntry.id)
        if args.request:
            stmt = stmt.where(AuditEntry.request_id == args.request)
        rows = [{"id": a.id, "at": a.at, "request_id": a.request_id, "action": a.action, "from_state": a.from_state,
                 "to_state": a.to_state, "actor": a.actor, "event_id": a.event_id, "reason": a.reason,
                 "details": a.details} for a in session.scalars(stmt)]
    if args.request and not rows:
        raise CliError(f"no audit entries for request {args.request}")
    if args.json:
        print_json(rows)
    else:
        print_table(rows, AUDIT_COLUMNS)
    return 0
