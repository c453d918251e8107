"""What every jitctl command shares: settings, the database, publishing, output, and errors without tracebacks.

A command raises `CliError` (or lets a known infrastructure error through); `main` prints one clear
message on stderr and exits with the code listed in `jitctl --help` (shared/cli.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.publisher import Publisher
from shared.cli import FAILED, USAGE
from shared.db.engine import make_engine, session_factory
from shared.events import Event, format_time
from shared.logs import hide_password
from shared.routes import declare_all
from shared.settings import Settings, SettingsError, missing_sqlite_file


class CliError(Exception):
    """A failure to report on stderr as-is, with exit code `code`."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def load_settings() -> Settings:
    try:
        return Settings.from_environment()
    except SettingsError as exc:
        raise CliError(f"invalid environment: {exc}", USAGE) from None


@contextmanager
def database(settings: Settings, *, create: bool = False) -> Iterator[sessionmaker[Session]]:
    """Sessions on the configured database. Unless `create`, a missing SQLite file is an error, never made."""
    path = missing_sqlite_file(settings.database_url)
    if path is not None and not create:
        raise CliError(f"no database at {path} (JIT_DATABASE_URL={hide_password(settings.database_url)}): check the "
                       "path, or run `jitctl db upgrade` to create it there")
    engine = make_engine(settings.database_url)
    try:
        yield session_factory(engine)
    except sa.exc.SQLAlchemyError as exc:
        raise database_error(settings, exc) from None
    finally:
        engine.dispose()


def database_error(settings: Settings, exc: Exception) -> CliError:
    text = str(getattr(exc, "orig", None) or exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    where = hide_password(settings.database_url)
    if "no such table" in text or ("does not exist" in text and "relation" in text):
        return CliError(f"the database {where} has no jit schema yet: run `jitctl db upgrade` first")
    if "file is not a database" in text:
        return CliError(f"{where} is not an SQLite database (file is not a database): check JIT_DATABASE_URL")
    return CliError(f"database {where} is not usable: {hide_password(first)}")


def publish(settings: Settings, events: Sequence[Event]) -> None:
    """Publish with broker confirms; declares the daemons' queues first so the events are routable."""
    try:
        declare_all(settings)
        with Publisher(settings, connection_attempts=1) as publisher:
            for event in events:
                publisher.publish(event.type, event.to_json(), message_id=event.id)
    except Exception as exc:  # PublishError, pika's connection errors, OSError: all mean "broker not usable"
        raise CliError(broker_message(settings, exc)) from None


def broker_message(settings: Settings, exc: Exception) -> str:
    detail = hide_password(str(exc)) or type(exc).__name__
    return (f"cannot publish to RabbitMQ at {hide_password(settings.amqp_url)} ({detail}). "
            "Start it (`rabbitmq-server -detached`, or `systemctl start rabbitmq-server`) or set JIT_AMQP_URL.")


def relative(value: datetime, now: datetime | None = None) -> str:
    """'3 min ago', 'in 2 h': how far a time is from now, to the unit that reads best."""
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    ahead, seconds = seconds < 0, abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size or unit == "s":
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if ahead else f"{amount} ago"
    raise AssertionError("unreachable")


def show(value: Any, now: datetime | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%SZ} ({relative(value, now)})"
    return printable(str(value))


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` safe for a terminal: line breaks and tabs as spaces, other control characters (escape
    sequences, bidi overrides) shown escaped, so a hostile reason or host name cannot rewrite the screen."""
    return _CONTROL.sub(lambda m: " " if m.group() in "\n\r\t" else f"\\u{ord(m.group()):04x}", text)


def plain(value: Any) -> Any:
    """A JSON-ready value: times as RFC 3339 UTC strings."""
    return format_time(value) if isinstance(value, datetime) else value


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=plain)
    sys.stdout.write("\n")


def stream_json(rows: Iterable[dict[str, Any]], *, lines: bool) -> int:
    """Write rows as they come (constant memory): a JSON array, or JSON Lines. Returns how many."""
    count = 0
    if not lines:
        sys.stdout.write("[")
    for row in rows:
        text = json.dumps(row, default=plain)
        sys.stdout.write(text + "\n" if lines else ("\n" if count == 0 else ",\n") + "  " + text)
        count += 1
    if not lines:
        sys.stdout.write("\n]\n" if count else "]\n")
    return count


def terminal_width() -> int | None:
    """The width to fit: $COLUMNS, else the terminal's; None when stdout is not a terminal (keep lines whole)."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, shrink: Sequence[str] = ()) -> None:
    """Aligned columns, headers in capitals; times in UTC with how long ago. To fit the terminal, the
    `shrink` columns are cut (marked with '~'), then columns are left out from the right (`--json` has all)."""
    now = datetime.now(UTC)
    columns = list(columns)
    cells = {c: [show(row.get(c), now) for row in rows] for c in columns}
    widths = {c: max([len(c)] + [len(v) for v in cells[c]]) for c in columns}
    width = terminal_width()

    def over() -> int:
        return sum(widths[c] for c in columns) + 2 * (len(columns) - 1) - (width or 0)

    if width is not None:
        for name in shrink:
            if over() > 0 and name in widths:
                widths[name] -= max(0, min(over(), widths[name] - max(len(name), 8)))
        while over() > 0 and len(columns) > 2:
            columns.pop()

    def fit(text: str, w: int) -> str:
        return text if len(text) <= w else text[: w - 1] + "~"

    lines = ["  ".join(fit(c.upper(), widths[c]).ljust(widths[c]) for c in columns)]
    lines += ["  ".join(fit(cells[c][i], widths[c]).ljust(widths[c]) for c in columns) for i in range(len(rows))]
    for line in lines:
        print(line.rstrip()[: width or None])
