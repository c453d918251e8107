"""What a running stack holds: each daemon's RSS and open file descriptors, its database connections,
and the outbox backlog, sampled from outside the processes (no hook in the daemons).

RSS is `VmRSS` of `/proc/<pid>/status` (kB), file descriptors the entries of `/proc/<pid>/fd`. A
daemon's PostgreSQL sessions are the rows of `pg_stat_activity` in the stack's database whose
`application_name` is `jit-<daemon>` (set by `shared.daemon.Runtime.create`); on SQLite there are
none to count and the figure is None. The backlog is the outbox rows not yet published.

Used by `bench.memory` and `bench.soak`; `growth` is how both compare a start with an end.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, text

from shared.db.engine import is_sqlite, make_engine
from shared.db.models import OutboxEvent


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid} (a zombie?)")


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def db_connections(engine: Engine) -> dict[str, int]:
    """PostgreSQL sessions in this engine's database, by application_name (the sampler's own excluded)."""
    query = text("SELECT application_name, count(*) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY application_name")
    with engine.connect() as conn:
        return {str(name): int(count) for name, count in conn.execute(query)}


def outbox_backlog(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(OutboxEvent)
                                .where(OutboxEvent.published_at.is_(None))).scalar_one())


@dataclass(frozen=True)
class Sample:
    """One look at the stack, `at` seconds after the sampler started; dicts are keyed by daemon name."""

    at: float
    rss_kb: dict[str, int]
    fds: dict[str, int]
    db_connections: dict[str, int] | None
    outbox_backlog: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Sampler:
    """Samples the daemons `pids` (daemon name -> pid, e.g. {"reaper": 4242}) and their database."""

    def __init__(self, pids: Mapping[str, int], database_url: str) -> None:
        self.pids = dict(pids)
        self.engine = make_engine(database_url, application_name="jit-bench-sampler")
        self.started = time.monotonic()

    def sample(self) -> Sample:
        by_app = None if is_sqlite(self.engine) else db_connections(self.engine)
        return Sample(
            at=round(time.monotonic() - self.started, 3),
            rss_kb={name: rss_kb(pid) for name, pid in self.pids.items()},
            fds={name: open_fds(pid) for name, pid in self.pids.items()},
            db_connections=None if by_app is None else {name: by_app.get(f"jit-{name}", 0) for name in self.pids},
            outbox_backlog=outbox_backlog(self.engine),
        )

    def close(self) -> None:
        self.engine.dispose()


def growth(start: float, end: float) -> float | None:
    """Growth from start to end in percent (None when start is 0: a backlog that was empty)."""
    return None if start == 0 else round(100.0 * (end - start) / start, 2)
