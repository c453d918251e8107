"""`jitctl db upgrade` and `jitctl apply -f FILE`: the schema, and the operator's declarative configuration."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jitctl.common import CliError, broker_message, database, database_error, load_settings, print_json
from shared.amqp.publisher import Publisher
from shared.config_file import ConfigError, load_config
from shared.db.config_apply import ActiveRequestsError, apply_config
from shared.db.engine import transaction
from shared.db.migrate import upgrade
from shared.db.outbox import publish_pending
from shared.logs import hide_password


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="create or migrate the schema (Alembic)")
    up.set_defaults(func=db_upgrade)
    apply = subparsers.add_parser("apply", help="load the declarative configuration, all or nothing",
                                  description="Validate FILE whole, then write it in one transaction. Re-applying "
                                              "the same file changes nothing. A file that would remove what an "
                                              "approved or elevated request depends on is refused, naming each "
                                              "request, unless --end-active is given. See docs/configuration.md.")
    apply.add_argument("-f", "--file", required=True, type=Path, help="the YAML configuration file")
    apply.add_argument("--end-active", action="store_true",
                       help="end (revoke) the approved and elevated requests that depend on what the file removes, "
                            "in the same transaction, instead of refusing the file")
    apply.add_argument("--json", action="store_true", help="print the summary as JSON")
    apply.set_defaults(func=apply_file)


def db_upgrade(_args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        upgrade(settings.database_url)
    except sa.exc.SQLAlchemyError as exc:
        raise database_error(settings, exc) from None
    print(f"database {hide_password(settings.database_url)} is at the latest schema")
    return 0


def apply_file(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}", 2) from None
    try:
        config = load_config(text)
    except ConfigError as exc:
        raise CliError(f"{args.file}: {exc}", 2) from None
    settings = load_settings()
    with database(settings) as factory:
        try:
            with transaction(factory) as session:
                summary = apply_config(session, config, now=datetime.now(UTC), end_active=args.end_active)
        except ActiveRequestsError as exc:
            raise CliError(f"{args.file}: {exc}", 2) from None
        if summary.ended:
            _publish_outbox(settings, factory)
    if args.json:
        print_json(summary.as_dict() | {"changed": summary.changed})
        return 0
    if not summary.changed:
        print("no changes")
    for verb, items in (("created", summary.created), ("updated", summary.updated), ("removed", summary.removed),
                        ("ended", summary.ended)):
        for item in items:
            print(f"{verb:8} {item}")
    return 0


def _publish_outbox(settings: Any, factory: Any) -> None:
    """Events of ended requests (cancellations): published now if the broker is up, else by any daemon's relay."""
    try:
        with Publisher(settings, connection_attempts=1) as publisher:
            publish_pending(factory, publisher)
    except Exception as exc:
        print(f"warning: {broker_message(settings, exc)} The events stay in the outbox; a running daemon "
              "publishes them.")
