"""What every jitctl command shares: settings, the database, publishing, output, and errors without tracebacks.

A command raises `CliError` (or lets a known infrastructure error through); `main` prints one clear
message on stderr and exits non-zero.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.publisher import Publisher
from shared.db.engine import make_engine, session_factory
from shared.events import Event, format_time
from shared.logs import hide_password
from shared.routes import declare_all
from shared.settings import Settings


class CliError(Exception):
    """A failure to report on stderr as-is, with exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def load_settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:
        raise CliError(f"invalid JIT_* configuration: {exc}", 2) from None


@contextmanager
def database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database_url)
    try:
        yield session_factory(engine)
    except sa.exc.OperationalError as exc:
        raise database_error(settings, exc) from None
    except sa.exc.ProgrammingError as exc:
        raise database_error(settings, exc) from None
    finally:
        engine.dispose()


def database_error(settings: Settings, exc: Exception) -> CliError:
    text = str(getattr(exc, "orig", exc))
    where = hide_password(settings.database_url)
    if "no such table" in text or ("does not exist" in text and "relation" in text):
        return CliError(f"the database {where} has no jit schema yet: run `jitctl db upgrade` first")
    return CliError(f"database {where} is not usable: {text.strip().splitlines()[0] if text.strip() else exc!r}")


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


def show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return format_time(value)
    return str(value)


def plain(value: Any) -> Any:
    """A JSON-ready value: times as RFC 3339 UTC strings."""
    return format_time(value) if isinstance(value, datetime) else value


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=plain)
    sys.stdout.write("\n")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Plain aligned columns, headers in capitals."""
    cells = [[show(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
