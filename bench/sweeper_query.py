"""Does the sweeper cost what is due, not the size of the table? 1,000,000 finished requests say.

Measures, on PostgreSQL (default) or SQLite, the three queries one sweep runs (expiries due,
revocations due, lost elevations) as the sweeper issues them:
  A. empty table,            no row due
  B. 1,000,000 terminal rows, no row due
  C. 1,000,000 terminal rows, 100 rows due (each kind)
and prints each median time and the ratios B/A and C/A, plus the query plans (index used).

    .venv/bin/python -m bench.sweeper_query                    # PostgreSQL on 127.0.0.1 (trust auth)
    .venv/bin/python -m bench.sweeper_query --engine sqlite    # a temporary SQLite file
It creates and drops its own database (PostgreSQL) or file (SQLite).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench.scratch import scratch_database
from services.reaper.revocation import due_revocations_query
from services.reaper.sweeper import BATCH, due_expiries_query, lost_elevations_query
from shared.db.engine import make_engine
from shared.db.migrate import upgrade

COLUMNS = ["id", "checkout_id", "secret_id", "requester_id", "host", "justification", "state", "task_id",
           "account", "group", "requested_at", "checkout_expires_at", "expires_at", "pre_existing", "failed",
           "attempts", "updated_at", "ended_at"]
TERMINAL = ["REVOKED", "DENIED", "CANCELLED", "FAILED"]


def terminal_rows(n: int, now: datetime) -> list[tuple[Any, ...]]:
    past = now - timedelta(days=30)
    return [(f"old-{i}", f"co-old-{i}", "sec-0-0", "alice", f"host{i % 500}.corp", "", TERMINAL[i % 4], "task",
             f"acct-{i % 5000}", "S-1-5-32-544", past, past, past, False, False, 1, past, past) for i in range(n)]


def load_postgres(engine: sa.Engine, rows: list[tuple[Any, ...]]) -> None:
    raw = engine.raw_connection()
    try:
        cursor: Any = raw.cursor()
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        with cursor.copy(f"COPY requests ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def load_sqlite(engine: sa.Engine, rows: list[tuple[Any, ...]]) -> None:
    table = sa.table("requests", *[sa.column(c) for c in COLUMNS])
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [dict(zip(COLUMNS, r, strict=True)) for r in rows])


def add_due(engine: sa.Engine, now: datetime, n: int) -> None:
    """n expired ELEVATED rows, n due REVOKING rows, n ELEVATING rows whose lease passed."""
    past = now - timedelta(minutes=1)
    rows = []
    for kind, state, extra in [("exp", "ELEVATED", {}), ("rev", "REVOKING", {"next_attempt_at": past}),
                               ("ele", "ELEVATING", {"lease_until": past})]:
        for i in range(n):
            rows.append({"id": f"{kind}-{i}", "checkout_id": f"co-{kind}-{i}", "secret_id": "sec-0-0",
                         "requester_id": "alice", "host": "h", "justification": "", "state": state,
                         "requested_at": past, "checkout_expires_at": past, "expires_at": past,
                         "pre_existing": False, "failed": False, "attempts": 0, "updated_at": past,
                         "next_attempt_at": None, "lease_until": None, **extra})
    table = sa.table("requests", *[sa.column(c) for c in rows[0]])
    with engine.begin() as conn:
        conn.execute(sa.insert(table), rows)


def queries(now: datetime) -> dict[str, Any]:
    return {"expiries": due_expiries_query(now, BATCH), "revocations": due_revocations_query(now, BATCH),
            "lost_elevations": lost_elevations_query(now, BATCH)}


def sweep_once(engine: sa.Engine, now: datetime) -> Callable[[], None]:
    stmts = list(queries(now).values())

    def run() -> None:
        with engine.connect() as conn:
            for stmt in stmts:
                conn.execute(stmt).all()

    return run


def median_ms(fn: Callable[[], None], runs: int) -> float:
    fn()  # warm the connection pool and the plan cache
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def plans(engine: sa.Engine, now: datetime) -> dict[str, str]:
    out = {}
    with engine.connect() as conn:
        for name, stmt in queries(now).items():
            # The plan of the statement as the sweeper sends it: with bound parameters.
            compiled = stmt.compile(engine)
            if engine.dialect.name == "sqlite":
                params: Any = tuple(compiled.params[k] for k in compiled.positiontup or ())
                lines = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), params).all()
            else:
                lines = conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params).all()
            out[name] = "\n    ".join(str(r[-1]) for r in lines)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=100)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    url, drop_database = scratch_database(args.engine, args.server)
    try:
        upgrade(url)
        engine = make_engine(url)
        now = datetime.now(UTC)
        a = median_ms(sweep_once(engine, now), args.runs)
        start = time.perf_counter()
        rows = terminal_rows(args.rows, now)
        (load_sqlite if args.engine == "sqlite" else load_postgres)(engine, rows)
        loaded = time.perf_counter() - start
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE" if args.engine == "sqlite" else "ANALYZE requests")
        b = median_ms(sweep_once(engine, now), args.runs)
        add_due(engine, now, args.due)
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE" if args.engine == "sqlite" else "ANALYZE requests")
        c = median_ms(sweep_once(engine, now), args.runs)
        print(f"engine={args.engine} terminal_rows={args.rows:,} (loaded in {loaded:.1f} s) due={args.due} "
              f"per kind, median of {args.runs} sweeps (3 queries each)")
        print(f"  A empty table, 0 due:        {a:8.3f} ms")
        print(f"  B {args.rows:,} rows, 0 due:   {b:8.3f} ms   B/A = {b / a:.2f}")
        print(f"  C {args.rows:,} rows, {args.due} due: {c:8.3f} ms   C/A = {c / a:.2f}")
        for name, plan in plans(engine, now).items():
            print(f"  plan {name}:\n    {plan}")
        engine.dispose()
    finally:
        drop_database()


if __name__ == "__main__":
    main()
