"""Engines and transactions for PostgreSQL (production) and SQLite (the embedded default).

SQLite ignores `SELECT ... FOR UPDATE`. Every SQLite transaction here therefore starts with
`BEGIN IMMEDIATE`, which takes the database's write lock up front: a claim (select then update)
is atomic against every other process, which is the guarantee `FOR UPDATE SKIP LOCKED` gives on
PostgreSQL. WAL mode keeps readers from blocking on the writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
# The database is down or restarting: the same transaction will work once it is back.
TRANSIENT_DATABASE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, application_name: str | None = None, **kwargs: Any) -> Engine:
    """`application_name` names a PostgreSQL session in `pg_stat_activity` (e.g. `jit-reaper`); SQLite ignores it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)
        _serialize_sqlite_writers(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    kwargs.setdefault("pool_pre_ping", True)
    if application_name is not None and "application_name=" not in url:
        kwargs["connect_args"] = {"application_name": application_name, **kwargs.get("connect_args", {})}
    return create_engine(url, **kwargs)


def _serialize_sqlite_writers(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory.begin() as session:
        yield session
