"""Two `jit-elevator` processes on one queue, 200 approved requests across 3 simulated hosts: each elevated once.

The daemons run as real subprocesses through their console script, against the real broker, the
test's database (SQLite and PostgreSQL) and three jit-winrm-sim hosts on 127.0.0.1/2/3.
"""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.publisher import Publisher
from shared.db.models import AuditEntry, Request
from shared.settings import Settings
from shared.states import State
from tests.conftest import settings_env
from tests.factories import HostSpec, make_request, seed_config
from tests.integration.test_elevator_sim import ENV, PASSWORD, WARNING_FILTERS, publish_approved
from tests.support import EventTap, poll
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.slow, *(pytest.mark.filterwarnings(f) for f in WARNING_FILTERS)]

REQUESTS = 200
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
ELEVATOR = Path(sys.executable).with_name("jit-elevator")


@pytest.fixture
def sims() -> Iterator[list[SimulatedHost]]:
    hosts = [SimulatedHost(address, users={"svc-jit": PASSWORD}).start() for address in ADDRESSES]
    yield hosts
    for host in hosts:
        host.close()


def start_elevator(settings: Settings, log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = settings_env(settings) | ENV | (extra_env or {})
    with log.open("wb") as out:
        return subprocess.Popen([str(ELEVATOR)], env=env, stdout=subprocess.DEVNULL, stderr=out)


def consumers_on(settings: Settings, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        return int(connection.channel().queue_declare(queue=queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:  # not declared yet
        return 0
    finally:
        if connection.is_open:
            connection.close()


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def log_events(path: Path) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        try:
            counts[json.loads(line).get("event", "")] += 1
        except json.JSONDecodeError:
            continue
    return counts


def test_two_replicas_elevate_each_request_exactly_once(settings: Settings, factory: sessionmaker[Session],
                                                         sims: list[SimulatedHost], tmp_path: Path) -> None:
    settings = settings.model_copy(update={"elevation_retry_seconds": 10.0, "workers": 8})
    per_host = -(-REQUESTS // len(sims))
    seed_config(factory, [HostSpec(s.address, s.port) for s in sims], secrets_per_host=per_host)
    requests = [make_request(factory, secret_id=f"sec-{i % 3}-{i // 3}", host=ADDRESSES[i % 3])
                for i in range(REQUESTS)]
    tap = EventTap(settings)
    logs = [tmp_path / "elevator-1.log", tmp_path / "elevator-2.log"]
    processes = [start_elevator(settings, log) for log in logs]
    try:
        poll(lambda: consumers_on(settings, settings.queue("elevator")) == 2, 30, "two consumers")
        with Publisher(settings) as publisher:
            for request in requests:
                publish_approved(publisher, request)
        try:
            tap.wait_for("elevation.elevated", count=REQUESTS, timeout=120)
        except AssertionError as exc:
            with factory() as s:
                states = collections.Counter(s.scalars(select(Request.state)))
            raise AssertionError(f"{exc}; states {dict(states)}; logs {[dict(log_events(x)) for x in logs]}") from None
        time.sleep(1.0)  # a double elevation would publish a second event: give it time to show
        elevated = collections.Counter(e["data"]["request_id"] for e in tap.of("elevation.elevated"))
        open_before_stop = [sim.open_shells() for sim in sims]
    finally:
        codes = [stop(p) for p in processes]
        tap.close()
    assert codes == [0, 0]
    assert all(open_before_stop), "the replicas pool their shells"
    # Deleted when they stopped: leaked shells count against each host's MaxShellsPerUser until they expire.
    assert [sim.open_shells() for sim in sims] == [0, 0, 0]
    assert set(elevated) == {r.id for r in requests} and set(elevated.values()) == {1}
    with factory() as s:
        states = collections.Counter(s.scalars(select(Request.state)))
        starts = dict(s.execute(select(AuditEntry.request_id, func.count()).where(
            AuditEntry.action == "start_elevation").group_by(AuditEntry.request_id)).all())
    assert states == {State.ELEVATED.value: REQUESTS}
    assert set(starts.values()) == {1} and len(starts) == REQUESTS
    for sim in sims:
        adds = collections.Counter(c.env.get("JIT_MEMBER_SID") for c in sim.command_log
                                   if c.script_name == "add_member")
        assert len(adds) == sum(1 for r in requests if r.host == sim.address)
        assert set(adds.values()) == {1}, "an account was added more than once"
    work = [log_events(log)["elevation.elevated"] for log in logs]
    assert sum(work) == REQUESTS and all(work), f"work split between the replicas: {work}"
