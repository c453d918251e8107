"""Listing at scale for `jitctl requests` and `jitctl audit`: filters, keyset pages, streamed output.

Newest first. A page is `--limit` rows (default 100; 0 for all, streamed) read in index order, so the
first page costs the same at a thousand rows or a million; the next page starts after `--cursor`, the
last row printed (keyset pagination: no OFFSET, no count). `--json` writes a JSON array and
`--jsonl` JSON Lines, both row by row in constant memory.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from jitctl.common import print_table, stream_json

BATCH = 500
_AGO = re.compile(r"^(\d+)\s*(s|m|min|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def when(text: str) -> datetime:
    """A time option: RFC 3339 / ISO 8601 (UTC if no offset), or a duration ago such as 30m, 2h, 7d."""
    match = _AGO.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: write 2026-11-30T10:00:00Z or 30m, 2h, 7d "
                                         "(that long ago)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: write a number of rows (0 for all)")
    return value


def add_page_options(parser: argparse.ArgumentParser, cursor_help: str) -> None:
    parser.add_argument("--limit", type=limit, default=100, metavar="N", help="at most N rows (default 100; 0: all)")
    parser.add_argument("--cursor", metavar="ID", help=cursor_help)
    parser.add_argument("--since", type=when, metavar="TIME", help="from this time (2026-11-30T10:00Z, or 2h ago)")
    parser.add_argument("--until", type=when, metavar="TIME", help="before this time (same forms)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="a JSON array, streamed")
    out.add_argument("--jsonl", action="store_true", help="JSON Lines: one object per line, streamed")


def rows(session: Session, stmt: Select[Any], limit: int, convert: Callable[[Any], dict[str, Any]]
         ) -> Iterator[dict[str, Any]]:
    """The rows of `stmt` (already ordered on an index), `limit` of them plus one to tell if more follow."""
    if limit:
        stmt = stmt.limit(limit + 1)
    result = session.execute(stmt.execution_options(yield_per=BATCH)).scalars()
    for row in result:
        yield convert(row)


def output(args: argparse.Namespace, found: Iterator[dict[str, Any]], *, key: str, columns: tuple[str, ...],
           shrink: tuple[str, ...], empty: str) -> int:
    """Print a page (streamed for --json/--jsonl); say on stderr how to get the next one. Returns the exit code."""
    page: list[dict[str, Any]] = []
    last: dict[str, Any] | None = None
    more = False

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal last, more
        for n, row in enumerate(found):
            if args.limit and n == args.limit:
                more = True
                return
            last = row
            yield row

    if args.json or args.jsonl:
        stream_json(counted(), lines=args.jsonl)
    else:
        page = list(counted())
        if page:
            print_table(page, columns, shrink=shrink)
        else:
            print(empty)
    if more and last is not None:
        print(f"more rows: add --cursor {last[key]} for the next {args.limit}, or --limit 0 for all",
              file=sys.stderr)
    return 0

