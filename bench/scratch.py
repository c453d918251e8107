"""A database of a benchmark's own: an SQLite file in a temporary folder, or a PostgreSQL database
created on the server and dropped again by the returned cleanup."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from shared.db.engine import make_engine


def scratch_database(engine: str, server_url: str) -> tuple[str, Callable[[], None]]:
    """(url, cleanup). `engine` is "sqlite" or "postgres"; `server_url` is a PostgreSQL admin URL."""
    tmp = tempfile.TemporaryDirectory(prefix="jit-bench-")
    if engine == "sqlite":
        return f"sqlite:///{Path(tmp.name) / 'bench.db'}", tmp.cleanup
    name = f"jit_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
        tmp.cleanup()

    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False), drop
