"""PostgreSQL: the daemons' runtime role may only INSERT into the audit trail (issue 11). The roles and
grants are deploy/postgres/roles.sql and grants.sql, run here exactly as docs/security.md says."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from services.approval.main import processor
from shared.clock import FakeClock
from shared.db.engine import make_engine, session_factory
from shared.db.migrate import upgrade
from shared.db.models import Request
from tests.conftest import REPO, RUN_ID
from tests.factories import HostSpec, seed_config
from tests.integration.approval_harness import requested

pytestmark = [pytest.mark.postgres]


def psql(url: sa.URL, script: str, **variables: str) -> None:
    args = [shutil.which("psql") or "psql", "-X", "-q", "-h", str(url.host or "127.0.0.1"), "-p", str(url.port or 5432),
            "-U", str(url.username), "-d", str(url.database), "-f", str(REPO / "deploy" / "postgres" / script)]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def roles(postgres_server_url: str) -> Iterator[dict[str, str]]:
    server = sa.make_url(postgres_server_url)
    name, owner, runtime = f"jit_test_roles_{RUN_ID}", f"jit_test_{RUN_ID}_owner", f"jit_test_{RUN_ID}_runtime"
    admin = make_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        psql(server.set(database=name), "roles.sql", owner=owner, runtime=runtime, database=name)
        owner_url = server.set(database=name, username=owner, password=None)
        upgrade(owner_url.render_as_string(hide_password=False))
        psql(owner_url, "grants.sql", runtime=runtime)
        yield {"owner": owner_url.render_as_string(hide_password=False),
               "runtime": server.set(database=name, username=runtime, password=None).render_as_string(
                   hide_password=False)}
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for role in (runtime, owner):
                conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


@pytest.mark.parametrize("statement", [
    "UPDATE audit SET reason = 'rewritten'",
    "DELETE FROM audit",
    "TRUNCATE audit",
    "ALTER TABLE audit DISABLE TRIGGER audit_no_update",
    "DROP TRIGGER audit_no_update ON audit",
    "DROP TABLE audit",
    "CREATE TABLE audit_copy (id integer)",
    "UPDATE alembic_version SET version_num = '0001'",
])
def test_the_runtime_role_cannot_change_or_remove_the_audit_trail(roles: dict[str, str], statement: str) -> None:
    engine = make_engine(roles["runtime"])
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO audit (at, action, actor) VALUES (now(), 'test', 'runtime')")
        with pytest.raises(sa.exc.ProgrammingError, match=r"permission denied|must be owner"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM audit WHERE action = 'test'").scalar()
    finally:
        engine.dispose()


def test_the_daemons_work_as_the_runtime_role(roles: dict[str, str]) -> None:
    owner, runtime = make_engine(roles["owner"]), make_engine(roles["runtime"])
    try:
        seed_config(session_factory(owner), [HostSpec("127.0.0.1", 5985)])
        factory = session_factory(runtime)
        event = requested()
        processor(factory, FakeClock(datetime.now(UTC)))(event)
        with factory() as s:
            row = s.get(Request, event.data.request_id)
            assert row is not None and row.state == "PENDING"
    finally:
        owner.dispose()
        runtime.dispose()
