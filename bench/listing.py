"""Does `jitctl requests` scale? The first page and a full dump, before and after issue 16, at 200,000 and
1,000,000 requests.

  before       the old listing: every row, oldest first, materialised, then one indented JSON document
  page         `jitctl requests --json` now: the newest 100 (a keyset page on ix_requests_listing), streamed
  page-noindex the same page with the listing index dropped (what migration 0004 buys)
  cursor       the page after a cursor in the middle of the table
  all          `jitctl requests --jsonl --limit 0` now: every row, streamed
  baseline     a raw primary-key lookup of one request, measured in the same run (the unit of the ratios)

Each measure runs in a child process (its peak RSS is the measure's own), on the same database.

    .venv/bin/python -m bench.listing                          # SQLite, 200,000 and 1,000,000 rows
    .venv/bin/python -m bench.listing --engine postgres        # PostgreSQL on 127.0.0.1 (trust auth)
    .venv/bin/python -m bench.listing --rows 200000 --skip-before-above 0
It creates and drops its own database (PostgreSQL) or file (SQLite).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench.scratch import scratch_database
from shared.db.engine import make_engine, session_factory
from shared.db.migrate import upgrade

COLUMNS = ["id", "checkout_id", "secret_id", "requester_id", "host", "justification", "state", "task_id",
           "account", "group", "requested_at", "checkout_expires_at", "expires_at", "pre_existing", "failed",
           "attempts", "updated_at", "ended_at", "reason", "approver_id", "decided_at"]
STATES = ["REVOKED", "DENIED", "CANCELLED", "FAILED", "REVOKED", "REVOKED"]
CHUNK = 50_000


def rows(start: int, n: int, t0: datetime) -> list[tuple[Any, ...]]:
    out = []
    for i in range(start, start + n):
        at = t0 + timedelta(seconds=i)
        out.append((f"req-{i:08d}", f"co-{i}", f"sec-{i % 300}", f"user-{i % 2000}", f"host{i % 500}.corp.example",
                    "patch KB5031455 on the web tier", STATES[i % 6], "task", f"acct-{i % 5000}", "S-1-5-32-544",
                    at, at + timedelta(hours=1), at + timedelta(hours=1), False, False, 1, at, at + timedelta(hours=1),
                    "checked in: the service was closed by the user", "bob", at))
    return out


def load(url: str, total: int, already: int) -> None:
    engine = make_engine(url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        for start in range(already, total, CHUNK):
            batch = rows(start, min(CHUNK, total - start), t0)
            if engine.dialect.name == "postgresql":
                raw = engine.raw_connection()
                try:
                    cursor: Any = raw.cursor()
                    with cursor.copy(f"COPY requests ({', '.join(repr(c).replace(chr(39), chr(34)) for c in COLUMNS)})"
                                     " FROM STDIN") as copy:
                        for row in batch:
                            copy.write_row(row)
                    raw.commit()
                finally:
                    raw.close()
            else:
                table = sa.table("requests", *[sa.column(c) for c in COLUMNS])
                with engine.begin() as conn:
                    conn.execute(sa.insert(table), [dict(zip(COLUMNS, r, strict=True)) for r in batch])
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()


class _Count(io.TextIOBase):
    def __init__(self) -> None:
        self.n = 0

    def write(self, text: str) -> int:
        self.n += len(text)
        return len(text)


def measure(mode: str, url: str, repeat: int) -> dict[str, Any]:
    """Run one measure in this (child) process; its time is the median of `repeat` runs."""
    from jitctl.common import print_json, stream_json
    from jitctl.listing import rows as page_rows
    from jitctl.query import request_dict
    from shared.db.models import Request

    factory = session_factory(make_engine(url))
    with factory() as session:  # the middle of the table, for the cursor page (outside the timing)
        count = session.scalar(sa.select(sa.func.count()).select_from(sa.table("requests"))) or 0
        middle = "req-" + str(count // 2).zfill(8)
    sink = _Count()
    times = []
    for _ in range(repeat):
        sink.n = 0
        started = time.perf_counter()
        with factory() as session, redirect_stdout(sink):
            if mode == "baseline":
                session.execute(sa.text("SELECT id FROM requests WHERE id = :i"), {"i": "req-00000042"}).all()
            elif mode == "before":
                print_json([request_dict(r) for r in session.scalars(
                    sa.select(Request).order_by(Request.requested_at, Request.id))])
            elif mode in ("page", "page-noindex", "cursor"):
                stmt = sa.select(Request).order_by(Request.requested_at.desc(), Request.id.desc())
                if mode == "cursor":
                    after = session.get(Request, middle)
                    assert after is not None
                    stmt = stmt.where(sa.tuple_(Request.requested_at, Request.id)
                                      < sa.tuple_(after.requested_at, after.id))
                stream_json(page_rows(session, stmt, 100, request_dict), lines=False)
            elif mode == "all":
                stream_json(page_rows(session, sa.select(Request).order_by(Request.requested_at.desc(),
                                                                           Request.id.desc()), 0, request_dict),
                            lines=True)
        times.append(time.perf_counter() - started)
    return {"seconds": statistics.median(times), "bytes": sink.n,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(mode: str, url: str, repeat: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.listing", "--child", mode, "--url", url,
                           "--repeat", str(repeat)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--server-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--skip-before-above", type=int, default=200_000,
                        help="measure the old full listing only up to this many rows (it takes minutes and GBs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.url, args.repeat)))
        return
    url, cleanup = scratch_database(args.engine, args.server_url)
    try:
        upgrade(url)
        loaded = 0
        print(f"engine {args.engine}; times are medians; ratio = time / raw primary-key lookup of the same run")
        print(f"{'rows':>9}  {'measure':13} {'time':>10}  {'ratio':>9}  {'peak RSS':>9}  {'output':>10}")
        for total in sorted(args.rows):
            load(url, total, loaded)
            loaded = total
            base = child("baseline", url, 200)
            plan = [("baseline", 200), ("page", 20), ("cursor", 20), ("all", 1)]
            if total <= args.skip_before_above:
                plan.insert(1, ("before", 1))
            results = {mode: base if mode == "baseline" else child(mode, url, n) for mode, n in plan}
            for mode, r in results.items():
                print(f"{total:>9,}  {mode:13} {r['seconds'] * 1000:>8.2f}ms  {r['seconds'] / base['seconds']:>8.0f}x"
                      f"  {r['maxrss_mb']:>7.0f}MB  {r['bytes'] / 1e6:>8.1f}MB", flush=True)
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_requests_listing")
        engine.dispose()
        r = child("page-noindex", url, 5)
        print(f"{loaded:>9,}  {'page-noindex':13} {r['seconds'] * 1000:>8.2f}ms  "
              f"{r['seconds'] / base['seconds']:>8.0f}x  {r['maxrss_mb']:>7.0f}MB  {r['bytes'] / 1e6:>8.1f}MB")
    finally:
        cleanup()


if __name__ == "__main__":
    main()
