"""Structured logging: JSON lines off a terminal, console on one; secrets never reach a line.

Every line carries `event` (a stable dotted name such as `elevation.revoked`) and, bound through
contextvars, the `request_id`, `checkout_id`, `host`, `attempt` and `event_id` known at that point.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

REDACTED = "[redacted]"
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|credential|authorization|api_?key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+:)(?P<pw>[^@\s]+)(?P<at>@)", re.IGNORECASE)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: m["scheme"] + REDACTED + m["at"], value)
    if isinstance(value, Mapping):
        return {k: REDACTED if _SECRET_KEYS.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def hide_password(url: str) -> str:
    """A URL fit for a message: its password replaced."""
    return str(_scrub(url))


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop values of secret-named keys and passwords inside URLs, at any depth."""
    for key in list(event_dict):
        event_dict[key] = REDACTED if _SECRET_KEYS.search(key) else _scrub(event_dict[key])
    return event_dict


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of writing (tests and daemons may replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", fmt: str | None = None, **static: Any) -> None:
    """Configure structlog and stdlib logging once, at process start; `static` fields (a daemon's `daemon`
    and `version`) are on every line, from every thread."""
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _Static(static),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    root.setLevel(logging.WARNING)
    # pika logs every refused connection with a traceback; our amqp layer logs each failure once, structured.
    logging.getLogger("pika").setLevel(logging.CRITICAL)


class _Static:
    """Adds fixed fields to every line, after the line's own (which win)."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields = dict(fields)

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in self.fields.items():
            event_dict.setdefault(key, value)
        return event_dict


class _ToStructlog(logging.Handler):
    """Library log records (SQLAlchemy, pika, requests) as JSON lines like ours: event `library.log`."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger().log(record.levelno, "library.log", logger=record.name, message=record.getMessage())


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger(**initial)


@contextmanager
def bound(**context: Any) -> Iterator[None]:
    """Bind request_id/checkout_id/host/attempt/event_id for every line logged inside the block."""
    keys = {k: v for k, v in context.items() if v is not None}
    with structlog.contextvars.bound_contextvars(**keys):
        yield
