"""Running real `jit-reaper` processes against the run's broker, a test database and a simulated host."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pika
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.reaper.handlers import ROUTING_KEYS
from shared.amqp.publisher import Publisher
from shared.amqp.topology import declare_topology
from shared.db.engine import transaction
from shared.db.models import AuditEntry, OutboxEvent, Request
from shared.events import new_event
from shared.settings import Settings
from tests.conftest import settings_env
from tests.factories import PASSWORD_ENV
from tests.integration.winrm_fixtures import SVC_PASSWORD, SVC_USER
from winrm_sim import SimulatedHost

REAPER = str(Path(sys.executable).with_name("jit-reaper"))


@pytest.fixture
def sim() -> Iterator[SimulatedHost]:
    host = SimulatedHost(users={SVC_USER: SVC_PASSWORD}).start()
    yield host
    host.close()


class Reapers:
    """Starts reaper processes and stops (or kills) them; prints their logs when a test fails."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        with pika.BlockingConnection(pika.URLParameters(settings.amqp_url)) as conn:
            # The queue exists before anything is published, whichever reaper starts first.
            declare_topology(conn.channel(), settings, "reaper", ROUTING_KEYS)

    def start(self) -> subprocess.Popen[bytes]:
        env = {**settings_env(self.settings), PASSWORD_ENV: SVC_PASSWORD}
        out = (self.logs / f"reaper-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([REAPER], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((proc, out))
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> list[int | None]:
        codes = []
        for proc, out in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            codes.append(proc.returncode)
            out.close()
        return codes

    def dump(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.logs.glob("reaper-*.log")))


@pytest.fixture
def reapers(settings: Settings, tmp_path: Path) -> Iterator[Reapers]:
    fast = settings.model_copy(update={"lease_seconds": 2.0, "retry_max_seconds": 0.5,
                                       "retry_in_process_seconds": 1.0, "revocation_threads": 16})
    group = Reapers(fast, tmp_path)
    yield group
    group.stop_all()


def publish(settings: Settings, event_type: str, **data: Any) -> str:
    event = new_event(event_type, data, source="test")
    with Publisher(settings) as publisher:
        publisher.publish(event.type, event.to_json(), message_id=event.id)
    return event.id


def wait_for(check: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs()}")


def states(factory: sessionmaker[Session], ids: list[str]) -> dict[str, str]:
    with transaction(factory) as s:
        return dict(s.execute(select(Request.id, Request.state).where(Request.id.in_(ids))).all())


def row(factory: sessionmaker[Session], request_id: str) -> Request:
    with transaction(factory) as s:
        found = s.get(Request, request_id, populate_existing=True)
        assert found is not None
        return found


def confirmations(factory: sessionmaker[Session], ids: list[str]) -> dict[str, int]:
    """Per request: how many times it was marked removed (audit) and announced (outbox)."""
    with transaction(factory) as s:
        audited = dict(s.execute(select(AuditEntry.request_id, func.count()).where(
            AuditEntry.request_id.in_(ids), AuditEntry.action == "removal_confirmed")
            .group_by(AuditEntry.request_id)).all())
        bodies = s.scalars(select(OutboxEvent.body).where(OutboxEvent.type == "elevation.revoked"))
        announced = sum(1 for b in bodies if any(i.encode() in b for i in ids))
    assert announced == sum(audited.values())
    return audited

