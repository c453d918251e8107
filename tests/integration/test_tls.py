"""TLS on this machine with a CA the tests make: a RabbitMQ node of the run's own that speaks only amqps
and requires client certificates, and a PostgreSQL instance that accepts only hostssl connections with
a client certificate, checked by the client with sslmode=verify-full. jit-approval runs over both.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pika
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.connection import connect
from shared.db.engine import make_engine, session_factory
from shared.db.migrate import upgrade
from shared.db.models import Request
from shared.settings import Settings
from shared.trust import everyone_as, plaintext_warnings
from tests.factories import HostSpec, seed_config
from tests.integration.approval_harness import approval_running, decided, poll, requested
from tests.tls_servers import Pki, TlsPostgres, TlsRabbitMQ, make_pki

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRabbitMQ]:
    node = TlsRabbitMQ(pki, tmp_path_factory.mktemp("rabbitmq"))
    try:
        yield node.start()
    finally:
        node.stop()


@pytest.fixture(scope="module")
def postgres(pki: Pki) -> Iterator[TlsPostgres]:
    import tempfile

    # Not under pytest's tmp dir: the postgres OS user must be able to reach it (mode 0700 parents).
    instance = TlsPostgres(pki, Path(tempfile.mkdtemp(prefix="jit-test-pg-tls-")))
    try:
        yield instance.start()
    finally:
        instance.stop()
        import shutil

        shutil.rmtree(instance.directory, ignore_errors=True)


def amqps_url(broker: TlsRabbitMQ, pki: Pki, *, client: bool = True, ca: Path | None = None) -> str:
    query = f"cafile={quote(str(ca or pki.ca))}"
    if client:
        query += f"&certfile={quote(str(pki.client_cert))}&keyfile={quote(str(pki.client_key))}"
    return f"amqps://guest:guest@localhost:{broker.port}/%2F?{query}"


def test_jit_approval_runs_over_amqps_and_verify_full(broker: TlsRabbitMQ, postgres: TlsPostgres, pki: Pki) -> None:
    url = postgres.url()
    admin = make_engine(postgres.url(), isolation_level="AUTOCOMMIT")
    name = f"jit_tls_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        assert conn.exec_driver_sql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").scalar() is True
    url = postgres.url(database=name)
    upgrade(url)
    engine = make_engine(url)
    factory: sessionmaker[Session] = session_factory(engine)
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings(amqp_url=amqps_url(broker, pki), database_url=url, exchange=f"{prefix}.events",
                        queue_prefix=prefix, queue_type="classic", outbox_poll_seconds=0.05,
                        publishers=everyone_as("guest"))
    try:
        with approval_running(settings) as runtime:
            request = requested()
            rid = request.data.request_id
            runtime.publisher.publish(request.type, request.to_json(), message_id=request.id)
            decision = decided(rid, "bob")
            runtime.publisher.publish(decision.type, decision.to_json(), message_id=decision.id)

            def state() -> str | None:
                with factory() as s:
                    row = s.get(Request, rid)
                    return row.state if row else None

            poll(lambda: state() == "APPROVED", 15, "APPROVED over amqps and verify-full")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_the_broker_refuses_a_client_without_a_certificate(broker: TlsRabbitMQ, pki: Pki) -> None:
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        connect(amqps_url(broker, pki, client=False), name="test no client certificate")


def test_the_client_refuses_a_broker_its_ca_did_not_sign(broker: TlsRabbitMQ, pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(amqps_url(broker, pki, ca=other.ca), name="test unknown CA")


def test_postgres_refuses_plaintext_and_a_wrong_host_name(postgres: TlsPostgres) -> None:
    plain = make_engine(postgres.url(sslmode="disable", client_cert=False))
    with pytest.raises(sa.exc.OperationalError, match=r"no encryption|reject"), plain.connect():
        pass
    plain.dispose()
    # verify-full checks the name the client asked for against the certificate (localhost, 127.0.0.1).
    # hostaddr: connect to the right address while asking for a name the certificate does not carry.
    wrong = make_engine(postgres.url().replace("@localhost:", "@db.wrong.example:") + "&hostaddr=127.0.0.1")
    with pytest.raises(sa.exc.OperationalError, match=r"server certificate .* does not match"), wrong.connect():
        pass
    wrong.dispose()


def test_plaintext_outside_the_loopback_is_warned_about() -> None:
    assert plaintext_warnings("amqp://u:p@127.0.0.1/%2F", "postgresql+psycopg://jit@localhost/jit") == []
    found = plaintext_warnings("amqp://u:p@rabbit.corp/%2F", "postgresql+psycopg://jit@db.corp/jit?sslmode=require")
    assert len(found) == 2 and "amqps://" in found[0] and "verify-full" in found[1]
    assert plaintext_warnings("amqps://u:p@rabbit.corp/%2F",
                              "postgresql+psycopg://jit@db.corp/jit?sslmode=verify-full") == []
