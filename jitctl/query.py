"""`jitctl requests`, `jitctl status` and `jitctl audit`: read-only views of the database.

Listings are newest first, filtered and paged on indexes (jitctl/listing.py); `status` is the
connection workflow's answer (contract section 4).
"""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import select, tuple_

from jitctl.common import CliError, database, load_settings, print_json
from jitctl.listing import add_page_options, output, rows
from shared.cli import USAGE
from shared.db.facts import secret_facts, user_facts
from shared.db.models import AuditEntry, Request
from shared.hosts import canonical_host
from shared.rules import connection_status
from shared.states import ACTIVE, State

# Human tables, most telling first: to fit a narrow terminal, columns are left out from the right.
REQUEST_COLUMNS = ("request_id", "state", "requested_at", "requester_id", "host", "secret_id", "approver_id",
                   "expires_at", "reason")
AUDIT_COLUMNS = ("id", "at", "action", "request_id", "actor", "to_state", "from_state", "reason")
STATES = [s.value for s in State]


def register(subparsers: Any) -> None:
    requests = subparsers.add_parser("requests", help="requests with state, requester, approver, times (newest first)")
    requests.add_argument("--state", type=str.upper, choices=STATES, help="only this state")
    requests.add_argument("--user", help="only this requester")
    requests.add_argument("--actor", help="only those decided by this approver")
    requests.add_argument("--host", help="only this host")
    requests.add_argument("--secret", help="only this secret")
    requests.add_argument("--request", help="only this request id")
    add_page_options(requests, "continue after this request id (the last one a page printed)")
    requests.set_defaults(func=list_requests)
    status = subparsers.add_parser("status", help="the connection workflow's elevation status (contract section 4)")
    status.add_argument("--secret", required=True, help="secret id")
    status.add_argument("--user", required=True, help="requester's user id")
    status.add_argument("--checkout", help="checkout id (default: the user's latest active request for the secret)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=show_status)
    audit = subparsers.add_parser("audit", help="the append-only audit trail (newest first)")
    audit.add_argument("--request", help="only this request")
    audit.add_argument("--actor", help="only entries caused by this user or component (e.g. 'jitctl apply')")
    audit.add_argument("--state", type=str.upper, choices=STATES, help="only transitions into this state")
    audit.add_argument("--user", help="only entries of requests by this requester")
    audit.add_argument("--host", help="only entries of requests on this host")
    audit.add_argument("--secret", help="only entries of requests for this secret")
    audit.add_argument("--action", help="only this action (docs/audit.md lists them)")
    add_page_options(audit, "continue after this audit entry id (the last one a page printed)")
    audit.set_defaults(func=show_audit)


def request_dict(row: Request) -> dict[str, Any]:
    return {"request_id": row.id, "state": row.state, "secret_id": row.secret_id, "checkout_id": row.checkout_id,
            "requester_id": row.requester_id, "host": row.host, "approver_id": row.approver_id,
            "task_id": row.task_id, "account": row.account, "group": row.group, "requested_at": row.requested_at,
            "decided_at": row.decided_at, "expires_at": row.expires_at, "elevated_at": row.elevated_at,
            "ended_at": row.ended_at, "end_trigger": row.end_trigger, "reason": row.reason}


def audit_dict(a: AuditEntry) -> dict[str, Any]:
    return {"id": a.id, "at": a.at, "request_id": a.request_id, "action": a.action, "from_state": a.from_state,
            "to_state": a.to_state, "actor": a.actor, "event_id": a.event_id, "reason": a.reason,
            "details": a.details}


def list_requests(args: argparse.Namespace) -> int:
    stmt = select(Request).order_by(Request.requested_at.desc(), Request.id.desc())
    for column, value in ((Request.state, args.state), (Request.requester_id, args.user),
                          (Request.approver_id, args.actor), (Request.secret_id, args.secret),
                          (Request.id, args.request)):
        if value:
            stmt = stmt.where(column == value)
    if args.host:
        stmt = stmt.where(Request.host == canonical_host(args.host))
    if args.since:
        stmt = stmt.where(Request.requested_at >= args.since)
    if args.until:
        stmt = stmt.where(Request.requested_at < args.until)
    with database(load_settings()) as factory, factory() as session:
        if args.cursor:
            after = session.get(Request, args.cursor)
            if after is None:
                raise CliError(f"--cursor {args.cursor}: no such request (give the last id a page printed)", USAGE)
            # A row-value comparison: both engines turn it into one range on ix_requests_listing.
            stmt = stmt.where(tuple_(Request.requested_at, Request.id) < tuple_(after.requested_at, after.id))
        return output(args, rows(session, stmt, args.limit, request_dict), key="request_id",
                      columns=REQUEST_COLUMNS, shrink=("reason", "secret_id", "host"), empty="no requests")


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
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc())
    for column, value in ((AuditEntry.request_id, args.request), (AuditEntry.actor, args.actor),
                          (AuditEntry.to_state, args.state), (AuditEntry.action, args.action)):
        if value:
            stmt = stmt.where(column == value)
    if args.user or args.host or args.secret:
        of = select(Request.id)
        for column, value in ((Request.requester_id, args.user), (Request.secret_id, args.secret),
                              (Request.host, canonical_host(args.host) if args.host else None)):
            if value:
                of = of.where(column == value)
        stmt = stmt.where(AuditEntry.request_id.in_(of))
    if args.since:
        stmt = stmt.where(AuditEntry.at >= args.since)
    if args.until:
        stmt = stmt.where(AuditEntry.at < args.until)
    if args.cursor:
        if not args.cursor.isdigit():
            raise CliError(f"--cursor {args.cursor}: an audit cursor is the id of the last entry a page printed", USAGE)
        stmt = stmt.where(AuditEntry.id < int(args.cursor))
    with database(load_settings()) as factory, factory() as session:
        if args.request and session.scalar(select(AuditEntry.id).where(AuditEntry.request_id == args.request)
                                           .limit(1)) is None:
            raise CliError(f"no audit entries for request {args.request}")
        return output(args, rows(session, stmt, args.limit, audit_dict), key="id", columns=AUDIT_COLUMNS,
                      shrink=("reason", "actor", "request_id"), empty="no audit entries")
