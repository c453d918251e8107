"""CPU seconds spent by each part of a running stack, read from outside the processes: each process's
`utime + stime` in `/proc/<pid>/stat`, and for PostgreSQL the backends serving each daemon (their
`application_name` is `jit-<daemon>`, shared.daemon) in the stack's database. Differences of two
readings are what a benchmark spent; the broker's CPU is not separable from other users' and is left out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import text

from shared.db.engine import make_engine

TICK = os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15 of stat)


def backend_pids(database_url: str) -> dict[int, str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT pid, application_name FROM pg_stat_activity "
                                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")).all()
    finally:
        engine.dispose()
    return {int(pid): str(name) for pid, name in rows}


def reading(pids: Mapping[str, int], database_url: str) -> dict[str, float]:
    """CPU seconds so far: per named process, and `postgres:<application_name>` per group of backends (the
    backends that exist now; one that closed in between takes its seconds with it)."""
    out = {name: process_seconds(pid) for name, pid in pids.items()}
    for pid, name in backend_pids(database_url).items():
        try:
            seconds = process_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        key = f"postgres:{name or '?'}"
        out[key] = out.get(key, 0.0) + seconds
    return out


def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()}
