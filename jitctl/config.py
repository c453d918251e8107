"""`jitctl db upgrade|current|check`, `jitctl apply -f FILE` and `jitctl diff -f FILE`: the schema, and the
operator's declarative configuration, planned before it is applied.

`apply` writes nothing it was not asked to: removals need `--prune`, ending active requests needs
`--end-active`, and `--dry-run` (or `diff`) prints the plan and changes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from jitctl.common import CliError, broker_message, database, database_error, load_settings, print_json
from shared.amqp.publisher import Publisher
from shared.cli import FAILED, OK, USAGE
from shared.config_file import ConfigError, ConfigFile, load_config
from shared.containment import credential_problems
from shared.db.config_apply import ApplyRefused, Summary, apply_config, plan_config
from shared.db.engine import make_engine, transaction
from shared.db.migrate import alembic_config, upgrade
from shared.db.outbox import publish_pending
from shared.logs import hide_password
from shared.settings import Settings

PROGRESS_ITEMS = 1000  # files at least this large report progress on stderr


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="database schema: upgrade, current, check")
    commands = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    for name, help_text, func in (
            ("upgrade", "create or migrate the schema (Alembic)", db_upgrade),
            ("current", "the schema revision of the database, and the latest one", db_current),
            ("check", "exit 0 if the schema is at the latest revision, 1 if not (or no database)", db_current)):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        sub.set_defaults(func=func, check=name == "check")
    for name, help_text in (("apply", "load the declarative configuration, all or nothing"),
                            ("diff", "show what `apply -f FILE` would change (as with --prune --end-active); "
                                     "changes nothing")):
        cmd = subparsers.add_parser(name, help=help_text, description=(
            "Validate FILE whole, then write it in one transaction. Re-applying the same file changes nothing. "
            "Items not in the file are removed only with --prune; a file that would remove what an approved or "
            "elevated request depends on is refused, naming each request, unless --end-active is given. "
            "See docs/configuration.md.") if name == "apply" else help_text)
        cmd.add_argument("-f", "--file", required=True, help="the YAML configuration file; - for standard input")
        if name == "apply":
            cmd.add_argument("--prune", action="store_true",
                             help="remove the items the database has and the file does not list")
            cmd.add_argument("--end-active", action="store_true",
                             help="end (revoke) the approved and elevated requests that depend on what the file "
                                  "removes, in the same transaction, instead of refusing the file")
            cmd.add_argument("--dry-run", action="store_true",
                             help="print what would be created, changed, removed and which requests would end; "
                                  "write nothing")
        cmd.add_argument("--json", action="store_true", help="print the summary as JSON")
        cmd.set_defaults(func=apply_file, diff=name == "diff")


def db_upgrade(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        upgrade(settings.database_url)
    except sa.exc.SQLAlchemyError as exc:
        raise database_error(settings, exc) from None
    current, head = _revisions(settings)
    if args.json:
        print_json({"database": hide_password(settings.database_url), "revision": current, "head": head})
    else:
        print(f"database {hide_password(settings.database_url)} is at the latest schema ({head})")
    return OK


def _revisions(settings: Settings) -> tuple[str | None, str | None]:
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision(), head
    except sa.exc.SQLAlchemyError as exc:
        raise database_error(settings, exc) from None
    finally:
        engine.dispose()


def db_current(args: argparse.Namespace) -> int:
    settings = load_settings()
    with database(settings):  # refuses a missing SQLite file instead of creating it
        current, head = _revisions(settings)
    at_head = current == head
    if args.json:
        print_json({"database": hide_password(settings.database_url), "revision": current, "head": head,
                    "at_head": at_head})
    elif current is None:
        print(f"no jit schema in {hide_password(settings.database_url)} (latest: {head}): run `jitctl db upgrade`")
    else:
        print(f"{current}{' (latest)' if at_head else f', latest is {head}: run `jitctl db upgrade`'}")
    return FAILED if args.check and not at_head else OK


def read_file(name: str) -> str:
    try:
        if name == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        return Path(name).read_bytes().decode("utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {name}: {exc.strerror}", USAGE) from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{name} is not UTF-8 text (byte {exc.start}); save it as UTF-8", USAGE) from None


class _Progress:
    """Progress lines on stderr for large files, at most one a second."""

    def __init__(self, items: int) -> None:
        self.on = items >= PROGRESS_ITEMS
        self.start = self.last = time.monotonic()

    def note(self, text: str) -> None:
        if self.on:
            print(f"jitctl apply: {text} ({time.monotonic() - self.start:.1f} s)", file=sys.stderr, flush=True)

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if self.on and (now - self.last >= 1.0 or done == total == 1 or (done == total and total >= PROGRESS_ITEMS)):
            self.last = now
            print(f"jitctl apply: {what} {done}/{total} ({now - self.start:.1f} s)", file=sys.stderr, flush=True)


def _items(config: ConfigFile) -> int:
    return (len(config.users) + len(config.credential_providers) + len(config.applications) + len(config.secrets)
            + len(config.tasks))


def apply_file(args: argparse.Namespace) -> int:
    name = "standard input" if args.file == "-" else args.file
    text = read_file(args.file)
    try:
        config = load_config(text)
    except ConfigError as exc:
        raise CliError(f"{name}: {exc}", USAGE) from None
    settings = load_settings()
    if contained := credential_problems(config, settings):
        raise CliError(f"{name}: {ConfigError(contained)}", USAGE)
    progress = _Progress(_items(config))
    progress.note(f"{name}: {_items(config)} items, valid")
    if args.diff or args.dry_run:
        return _plan(args, settings, config, progress, name)
    with database(settings) as factory:
        try:
            with transaction(factory) as session:
                summary = apply_config(session, config, now=datetime.now(UTC), end_active=args.end_active,
                                       prune=args.prune, progress=progress)
                progress.note("committing")
        except ApplyRefused as exc:
            raise CliError(f"{name}: {exc}", USAGE) from None
        if summary.ended:
            _publish_outbox(settings, factory)
    _print_summary(args, summary, planned=False)
    return OK


def _plan(args: argparse.Namespace, settings: Settings, config: ConfigFile, progress: _Progress, name: str) -> int:
    with database(settings) as factory, factory() as session:
        try:
            summary = plan_config(session, config, now=datetime.now(UTC), progress=progress)
        finally:
            session.rollback()
    _print_summary(args, summary, planned=True)
    if args.diff:
        return OK
    needs = []
    if summary.removed and not args.prune:
        needs.append(f"--prune ({len(summary.removed)} removal(s))")
    if summary.conflicts and not args.end_active:
        needs.append(f"--end-active ({len(summary.conflicts)} active request(s))")
    if needs:
        print(f"jitctl apply: {name}: without --dry-run this would be refused: it needs {' and '.join(needs)}",
              file=sys.stderr)
        return USAGE
    return OK


def _print_summary(args: argparse.Namespace, summary: Summary, *, planned: bool) -> None:
    needs_end = {c.request_id for c in summary.conflicts}
    if args.json:
        print_json(summary.as_dict() | {"changed": summary.changed, "dry_run": planned,
                                        "needs_end_active": sorted(needs_end)})
        return
    if not summary.changed:
        print("no changes")
    prune_note = "" if getattr(args, "prune", False) else "  (needs --prune)"
    for verb, items in (("create", summary.created), ("update", summary.updated), ("remove", summary.removed),
                        ("end", summary.ended)):
        for item in items:
            note = prune_note if verb == "remove" else ""
            if verb == "end" and item.split(" ")[1] in needs_end and not getattr(args, "end_active", False):
                note = "  (needs --end-active)"
            label = f"would {verb}" if planned else {"create": "created", "update": "updated", "remove": "removed",
                                                     "end": "ended"}[verb]
            print(f"{label:13}" if planned else f"{label:8}", item + (note if planned else ""), sep=" ")


def _publish_outbox(settings: Any, factory: Any) -> None:
    """Events of ended requests (cancellations): published now if the broker is up, else by any daemon's relay."""
    try:
        with Publisher(settings, connection_attempts=1) as publisher:
            publish_pending(factory, publisher)
    except Exception as exc:
        print(f"warning: {broker_message(settings, exc)} The events stay in the outbox; a running daemon "
              "publishes them.")
