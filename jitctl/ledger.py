"""`jitctl drift` and `jitctl memberships`: what the reconciler found, and the ledger it converges hosts to."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import select

from jitctl.common import database, load_settings, print_json, print_table
from shared.db import ledger
from shared.db.models import Drift, Membership, ReconcileTarget

DRIFT_COLUMNS = ("host", "group_sid", "account", "account_sid", "action", "first_seen", "last_seen", "resolved_at")
MEMBERSHIP_COLUMNS = ("host", "group_sid", "account", "account_sid", "baseline", "ours", "holders")
TARGET_COLUMNS = ("host", "group_sid", "last_run_at", "next_at", "last_error")


def register(subparsers: Any) -> None:
    drift = subparsers.add_parser("drift", help="members of watched groups that no grant explains (open ones)")
    drift.add_argument("--all", action="store_true", help="also those that have gone since")
    drift.add_argument("--host", help="only this host")
    drift.add_argument("--json", action="store_true")
    drift.set_defaults(func=show_drift)
    memberships = subparsers.add_parser("memberships", help="the membership ledger: baseline, ours, holders; "
                                        "and when the reconciler last looked at each host")
    memberships.add_argument("--host", help="only this host")
    memberships.add_argument("--json", action="store_true")
    memberships.set_defaults(func=show_memberships)


def show_drift(args: argparse.Namespace) -> int:
    with database(load_settings()) as factory, factory() as session:
        query = select(Drift).order_by(Drift.first_seen, Drift.id)
        if not args.all:
            query = query.where(Drift.resolved_at.is_(None))
        if args.host:
            query = query.where(Drift.host == args.host.lower())
        rows = [{"host": d.host, "group_sid": d.group_sid, "account": d.account, "account_sid": d.account_sid,
                 "action": d.action, "first_seen": d.first_seen, "last_seen": d.last_seen,
                 "resolved_at": d.resolved_at} for d in session.scalars(query)]
    if args.json:
        print_json(rows)
    elif rows:
        print_table(rows, DRIFT_COLUMNS)
    else:
        print("no drift: every member of every watched group is explained by a grant or the baseline")
    return 0


def show_memberships(args: argparse.Namespace) -> int:
    with database(load_settings()) as factory, factory() as session:
        query = select(Membership).order_by(Membership.host, Membership.group_sid, Membership.account)
        targets = select(ReconcileTarget).order_by(ReconcileTarget.host, ReconcileTarget.group_sid)
        if args.host:
            query = query.where(Membership.host == args.host.lower())
            targets = targets.where(ReconcileTarget.host == args.host.lower())
        rows = [{"host": m.host, "group_sid": m.group_sid, "account": m.account, "account_sid": m.account_sid,
                 "baseline": m.baseline, "ours": m.ours, "holders": ledger.active_holders(session, m.id)}
                for m in session.scalars(query)]
        watched = [{"host": t.host, "group_sid": t.group_sid, "last_run_at": t.last_run_at, "next_at": t.next_at,
                    "last_error": t.last_error} for t in session.scalars(targets)]
    if args.json:
        print_json({"memberships": rows, "reconciler": watched})
        return 0
    if rows:
        print_table(rows, MEMBERSHIP_COLUMNS)
    else:
        print("the ledger is empty")
    if watched:
        print()
        print_table(watched, TARGET_COLUMNS)
    return 0
