"""No secret leaks: a short but complete flow with known passwords, then every output scanned for them.

The three daemons run as real processes (JSON logs at debug level, every line kept) against a broker user
of this test's own with a known password (so the AMQP URL carries a secret), a database URL with a
password (PostgreSQL: a role of the test's own; SQLite has none), and two simulated hosts over NTLM: the
credential provider's password is right for one and wrong for the other, whose password is also known.
The flow: requested, approved, elevated, checked in; requested, approved, elevated, `jitctl revoke`; an
event from a publisher nobody trusts (refused, audited); an elevation that fails WinRM authentication;
`jitctl requests --json` and `jitctl audit --json`. Then every log line, every published event (an
EventTap), the audit trail, the outbox, jitctl's output and a dump of every table's rows are scanned:
zero occurrences of any password, in plain or URL-encoded form.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pika
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from jitctl.main import main
from shared.amqp.publisher import Publisher
from shared.db.engine import make_engine, session_factory, transaction
from shared.db.models import Base, Request
from shared.events import Event, new_event
from shared.settings import Settings
from shared.trust import everyone_as
from tests.conftest import RUN_ID, settings_env
from tests.factories import PASSWORD_ENV, HostSpec, seed_config
from tests.integration.approval_harness import decided, requested
from tests.integration.test_elevator_sim import WARNING_FILTERS
from tests.reliability_record import Record, database_kind
from tests.support import EventTap, poll
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq, *(pytest.mark.filterwarnings(f) for f in WARNING_FILTERS)]
BIN = Path(sys.executable).parent
CREDENTIAL_PASSWORD = "Cred-Pw-7Qk2xLm9Vt"
HOST2_PASSWORD = "Host2-Pw-4Rz8NcW1p"
BROKER_PASSWORD = "Brk-Pw-9Xc3Vb6Nq0"
DATABASE_PASSWORD = "Db-Pw-5Ty7Ui2Op8"
SVC = "svc-jit"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def broker_url(amqp_run_url: str) -> Iterator[str]:
    """A broker user of this test's own, with a known password, in the run's vhost."""
    parts = urlsplit(amqp_run_url)
    if "JIT_TEST_AMQP_URL" in os.environ or not shutil.which("rabbitmqctl"):  # the caller's broker: its URL must
        # carry a real password
        password = unquote(parts.password or "")
        if password in ("", "guest"):
            pytest.fail("set JIT_TEST_AMQP_URL with a user that has a password, or run on a broker rabbitmqctl reaches")
        yield amqp_run_url
        return
    vhost = unquote(parts.path.lstrip("/"))
    user = f"jit-test-leak-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    rabbitmqctl("add_user", user, BROKER_PASSWORD)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield f"amqp://{user}:{BROKER_PASSWORD}@{parts.hostname}:{parts.port or 5672}/{quote(vhost, safe='')}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60)


@pytest.fixture
def database_with_password(database_url: str) -> Iterator[str]:
    """PostgreSQL: a role of this test's own with a known password; SQLite has no password."""
    if not database_url.startswith("postgresql"):
        yield database_url
        return
    role = f"jit_test_leak_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    admin = make_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{DATABASE_PASSWORD}'")
        conn.exec_driver_sql(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
        conn.exec_driver_sql(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    try:
        yield sa.make_url(database_url).set(username=role, password=DATABASE_PASSWORD).render_as_string(
            hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


def daemon(name: str, settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = settings_env(settings) | {PASSWORD_ENV: CREDENTIAL_PASSWORD, "JIT_LOG_LEVEL": "debug",
                                    "JIT_LOG_FORMAT": "json"}
    with log.open("wb") as out:
        return subprocess.Popen([str(BIN / f"jit-{name}")], env=env, stdout=out, stderr=subprocess.STDOUT)


def consumers(settings: Settings, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        return int(connection.channel().queue_declare(queue=queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if connection.is_open:
            connection.close()


def state(factory: sessionmaker[Session], request_id: str) -> str | None:
    with factory() as s:
        row = s.get(Request, request_id)
        return row.state if row is not None else None


def jitctl(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    assert exited.value.code in (0, None), (argv, err)
    return out + err


def test_no_password_appears_anywhere(settings: Settings, amqp_run_url: str, broker_url: str,
                                      database_with_password: str,
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings.model_copy(update={
        "amqp_url": broker_url, "database_url": database_with_password, "elevation_retry_seconds": 2.0,
        "publishers": everyone_as(unquote(urlsplit(broker_url).username or ""))})
    assert BROKER_PASSWORD in settings.amqp_url  # the secrets are really in use, so a leak would show
    assert DATABASE_PASSWORD in settings.database_url or settings.database_url.startswith("sqlite")
    factory = session_factory(make_engine(settings.database_url))
    host1 = SimulatedHost("127.0.0.1", users={SVC: CREDENTIAL_PASSWORD}).start()
    host2 = SimulatedHost("127.0.0.2", users={SVC: HOST2_PASSWORD}).start()
    seed_config(factory, [HostSpec(host1.address, host1.port, transport="ntlm"),
                          HostSpec(host2.address, host2.port, transport="ntlm")], username=f"CORP\\{SVC}")
    for key, value in {**settings_env(settings), PASSWORD_ENV: CREDENTIAL_PASSWORD}.items():
        monkeypatch.setenv(key, value)
    tap = EventTap(settings)
    logs = {name: tmp_path / f"{name}.log" for name in ("approval", "elevator", "reaper")}
    procs = [daemon(name, settings, path) for name, path in logs.items()]
    outputs: list[str] = []
    try:
        poll(lambda: all(consumers(settings, settings.queue(n)) >= 1 for n in logs), 60, "three daemons consuming")

        def send(event: Event, url: str = settings.amqp_url) -> None:
            with Publisher(settings.model_copy(update={"amqp_url": url})) as publisher:
                publisher.publish(event.type, event.to_json(), message_id=event.id)

        def elevated(host: str, secret_id: str) -> tuple[str, str]:
            event = requested(secret_id=secret_id, host=host)
            send(event)
            poll(lambda: state(factory, event.data.request_id) == "PENDING", 20, "PENDING")
            send(decided(event.data.request_id, "bob"))
            return event.data.request_id, event.data.checkout_id

        # 1. approved, elevated over NTLM, checked in.
        rid1, co1 = elevated(host1.address, "sec-0-0")
        poll(lambda: state(factory, rid1) == "ELEVATED", 30, "req 1 ELEVATED")
        send(new_event("secret.checked_in", {"checkout_id": co1, "secret_id": "sec-0-0", "reason": "service_closed"},
                       source="test/workflow"))
        poll(lambda: state(factory, rid1) == "REVOKED", 30, "req 1 REVOKED")
        # 2. approved, elevated, revoked by an operator.
        rid2, _ = elevated(host1.address, "sec-0-0")
        poll(lambda: state(factory, rid2) == "ELEVATED", 30, "req 2 ELEVATED")
        outputs.append(jitctl(capsys, "revoke", rid2, "--as", "bob", "--reason", "incident 7"))
        poll(lambda: state(factory, rid2) == "REVOKED", 30, "req 2 REVOKED")
        # 3. a decision from a broker user nobody trusts: refused and audited.
        pending = requested(secret_id="sec-0-0", host=host1.address)
        send(pending)
        poll(lambda: state(factory, pending.data.request_id) == "PENDING", 20, "req 3 PENDING")
        send(decided(pending.data.request_id, "bob"), url=amqp_run_url)  # the run's user, not in JIT_PUBLISHERS
        # 4. the provider's password is wrong on host 2: the elevation fails WinRM authentication.
        rid4, _ = elevated(host2.address, "sec-1-0")
        poll(lambda: state(factory, rid4) in ("FAILED", "REVOKED"), 60, "req 4 failed")
        with factory() as s:
            refused = s.execute(sa.text("SELECT count(*) FROM audit WHERE action = 'event.refused'")).scalar()
        assert refused and state(factory, pending.data.request_id) == "PENDING"
        outputs.append(jitctl(capsys, "requests", "--json", "--limit", "0"))
        outputs.append(jitctl(capsys, "audit", "--json", "--limit", "0"))
        poll(lambda: tap.of("elevation.revoked") and len(tap.of("elevation.revoked")) >= 2, 20, "revocations published")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
        host1.close()
        host2.close()

    log_text = "\n".join(path.read_text(errors="replace") for path in logs.values())
    events = "\n".join(repr(e) for e in tap.drain())
    tap.close()
    with transaction(factory) as s:
        dump = "\n".join(repr(tuple(row)) for table in Base.metadata.sorted_tables
                         for row in s.execute(sa.select(table)))
    factory.kw["bind"].dispose()
    # The scan means something only if the flow really ran: each story left its mark.
    assert "elevation.revoked" in log_text and "event.rejected" in log_text
    assert "InvalidCredentialsError" in log_text and "'elevation.failed'" in events
    assert events.count("'elevation.revoked'") >= 2 and "event.refused" in dump
    texts = {"logs": log_text, "events": events, "database": dump, "jitctl": "\n".join(outputs)}
    passwords = [CREDENTIAL_PASSWORD, HOST2_PASSWORD, BROKER_PASSWORD]
    if settings.database_url.startswith("postgresql"):
        passwords.append(DATABASE_PASSWORD)
    hits = {(where, pw): text.count(variant) for where, text in texts.items() for pw in passwords
            for variant in {pw, quote(pw, safe=""), pw.encode().hex()} if variant in text}
    assert hits == {}, hits
    record = Record("secret-leaks", database_kind(settings.database_url),
                    command=".venv/bin/pytest -p no:cacheprovider tests/e2e/test_secret_leaks.py")
    for where, text in texts.items():
        record.tried(f"{len(passwords)} known passwords (plain, URL-encoded, hex) searched in {where}", kind="scan",
                     outcome=f"0 hits in {len(text.splitlines())} lines")
    record.write()
