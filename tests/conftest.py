"""The one fixture module: a fresh database (SQLite and PostgreSQL) and a fresh broker vhost per run.

Services are real. URLs come from the environment when given:
  JIT_TEST_POSTGRES_URL  admin URL of a PostgreSQL server (default: the local one, trust auth)
  JIT_TEST_AMQP_URL      a RabbitMQ URL whose vhost this run may use as its own (default: a new
                         vhost `jit-test-<run>` made with rabbitmqctl on the local broker)
When no URL is given and the local server does not answer, testcontainers is tried if a Docker
engine is present; otherwise the test fails with a message saying what to start. Never skipped:
a suite that silently skips its database tests proves nothing.

Each test gets its own exchange and queue names inside the run's vhost, and its own SQLite file or
an emptied PostgreSQL database, so tests never see each other's data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import make_engine, session_factory
from shared.db.migrate import upgrade
from shared.db.models import Base
from shared.routes import delete_all
from shared.settings import Settings
from shared.trust import broker_user, everyone_as

RUN_ID = uuid.uuid4().hex[:10]
REPO = Path(__file__).resolve().parent.parent
HANDBOOK = REPO.parent / "shared"  # read-only data for tests (recorded Windows transcripts)


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    url = os.environ.get("JIT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    try:
        engine = make_engine(url)
        with engine.connect():
            pass
        engine.dispose()
        yield url
        return
    except sa.exc.OperationalError as exc:
        if "JIT_TEST_POSTGRES_URL" in os.environ or not _docker_available():
            pytest.fail(f"PostgreSQL is not reachable at {url} ({exc.orig}); start it with "
                        "`pg_ctlcluster --skip-systemctl-redirect <version> main start` or run .ci/run")
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer("postgres:16", driver="psycopg") as container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def postgres_run_database(postgres_server_url: str) -> Iterator[str]:
    """A database of this run's own, migrated once; dropped at the end."""
    name = f"jit_test_{RUN_ID}"
    admin = make_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _empty_postgres(url: str) -> None:
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs twice: on an SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jit.db'}"
        upgrade(url)
        return url
    url: str = request.getfixturevalue("postgres_run_database")
    _empty_postgres(url)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: sa.Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def amqp_run_url() -> Iterator[str]:
    """A vhost of this run's own on the broker; deleted at the end."""
    given = os.environ.get("JIT_TEST_AMQP_URL")
    if given:
        yield given
        return
    if not shutil.which("rabbitmqctl"):
        if not _docker_available():
            pytest.fail("rabbitmqctl not found: set JIT_TEST_AMQP_URL to a RabbitMQ vhost this run may use, "
                        "or run scripts/test, which installs and starts RabbitMQ")
        from testcontainers.community.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.10") as container:  # a broker of this run's own: its / vhost
            params = container.get_connection_params()
            yield f"amqp://guest:guest@{params.host}:{params.port}/%2F"
        return
    vhost = f"jit-test-{RUN_ID}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"
    try:
        _rabbitmqctl("delete_vhost", vhost)
    except subprocess.SubprocessError as exc:  # scripts/test removes stale jit-test-* vhosts before a run
        print(f"\nconftest: could not delete vhost {vhost}: {exc!r}")


@pytest.fixture
def settings(amqp_run_url: str, database_url: str) -> Iterator[Settings]:
    """Settings for one test: its database and its own exchange and queue names in the run's vhost.

    Classic queues, removed after the test: hundreds of quorum queues (one Raft group each) alive in
    one vhost made the single-node test broker stall. The quorum topology itself, with its delivery
    limit and dead-lettering, is tested in tests/integration/test_amqp_*.py.
    """
    name = f"t{uuid.uuid4().hex[:8]}"
    test_settings = Settings(
        amqp_url=amqp_run_url, database_url=database_url, exchange=f"{name}.events", queue_prefix=name,
        queue_type="classic", sweep_interval_seconds=0.2, outbox_poll_seconds=0.05, retry_initial_seconds=0.05,
        retry_max_seconds=0.5, retry_in_process_seconds=1.0, winrm_operation_timeout_seconds=2,
        winrm_read_timeout_seconds=4, winrm_deadline_seconds=10.0, shutdown_grace_seconds=10.0,
        # An explicit mapping naming the run's one broker user for every type (not the development flag):
        # tests of the trust boundaries (tests/integration/test_trust*.py) use distinct users of their own.
        publishers=everyone_as(broker_user(amqp_run_url)),
    )
    yield test_settings
    try:
        delete_all(test_settings)
    except Exception as exc:  # cleanup only: the run's vhost is deleted at the end anyway
        print(f"conftest: could not delete the test's queues: {exc!r}")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a daemon subprocess use `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    for field, value in settings.model_dump().items():
        if value is not None:
            env[f"JIT_{field.upper()}"] = str(value)
    env.setdefault("JIT_LOG_FORMAT", "json")
    return env


# Tests that start servers of their own (a RabbitMQ node or cluster, a PostgreSQL instance): under pytest-xdist
# (scripts/test runs two workers) they run one after another on one worker, never two at once on 2 cores.
OWN_SERVERS = {"test_chaos_run.py", "test_cluster_failover.py", "test_amqp_node_list.py", "test_database_hosts.py",
               "test_tls.py", "test_bench_expiry.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in OWN_SERVERS:
            item.add_marker(pytest.mark.xdist_group("own-servers"))


def pytest_configure(config: pytest.Config) -> None:
    """Log as the daemons do (JSON to stderr) from the start: structlog's default prints to stdout, where an
    in-process daemon's lines would mix with what a `jitctl` run printed."""
    from shared import logs

    logs.configure("info", "json")


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that runs `jitctl`'s main in-process reconfigures logging for the whole process (warning level,
    its own root handler): put back what was there, so later tests' `capture_logs` still sees info lines."""
    import logging

    import structlog

    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    pika_level = logging.getLogger("pika").level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("pika").setLevel(pika_level)
