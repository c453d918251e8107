"""JIT_DATABASE_URL naming a primary and its standbys (libpq's `?host=H:P&host=H:P&target_session_attrs=read-write`):
accepted, a host that is down is passed over, and the session lands on a writable server (docs/cluster.md)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shared.db.engine import make_engine
from shared.settings import Settings
from shared.trust import plaintext_warnings
from tests.private_servers import free_port

pytestmark = pytest.mark.postgres


def hosts_url(url: str, *hosts: str) -> str:
    parsed = sa.make_url(url)
    return parsed.set(host=None, port=None, query={**parsed.query, "host": hosts,
                                                   "target_session_attrs": "read-write", "connect_timeout": "5"}
                      ).render_as_string(hide_password=False)


def test_a_down_host_is_passed_over_for_the_writable_one(postgres_run_database: str) -> None:
    live = sa.make_url(postgres_run_database)
    url = hosts_url(postgres_run_database, f"127.0.0.1:{free_port()}", f"{live.host}:{live.port or 5432}")
    assert Settings.from_environment({"JIT_DATABASE_URL": url}).database_url == url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            port, standby = conn.exec_driver_sql("SELECT inet_server_port(), pg_is_in_recovery()").one()
    finally:
        engine.dispose()
    assert (port, standby) == (live.port or 5432, False)


def test_every_listed_database_host_is_checked_for_tls() -> None:
    two = "postgresql+psycopg://jit@/jit?host=db1.corp:5432&host=db2.corp:5432&target_session_attrs=read-write"
    warned = plaintext_warnings("amqp://u:p@127.0.0.1/v", two)
    assert [w.split(" ")[2] for w in warned] == ["db1.corp", "db2.corp"]
    assert plaintext_warnings("amqp://u:p@127.0.0.1/v", two + "&sslmode=verify-full") == []
