"""The launch sequence upstream follows for a NOT_REQUIRED task, end to end with real daemon processes.

`jit-approval` and `jit-elevator` run as processes against the run's broker, a database (both engines)
and a simulated Windows host over WinRM. The connection workflow, as docs/approval.md tells it to,
publishes `elevation.requested` and polls `status.query` (docs/status_client.py) until `ready`: Launch is
offered only once the membership is confirmed on the host, so every `ready: true` it sees must find the
account in the group on the host at that moment, and `elevation.elevated` has been published.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.approval.status_server import status_queue
from shared.amqp.publisher import Publisher
from shared.db.models import OutboxEvent
from shared.settings import Settings
from shared.trust import broker_user
from tests.conftest import settings_env
from tests.e2e.reaper_processes import sim as sim
from tests.e2e.test_elevator_replicas import consumers_on, start_elevator, stop
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, HostSpec, seed_config
from tests.integration.approval_harness import requested
from tests.integration.test_elevator_sim import WARNING_FILTERS
from tests.integration.test_status_query import load_client_module
from tests.integration.winrm_fixtures import SVC_PASSWORD
from tests.support import poll
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq, *(pytest.mark.filterwarnings(f) for f in WARNING_FILTERS)]
APPROVAL = Path(sys.executable).with_name("jit-approval")


def test_request_then_wait_until_ready_then_launch(settings: Settings, factory: sessionmaker[Session],
                                                   sim: SimulatedHost, tmp_path: Path) -> None:
    seed_config(factory, [HostSpec(sim.address, sim.port)], approval_required=False)
    sim.set_command_delay(0.5)  # the add takes a while: the status must say Preparing meanwhile
    with (tmp_path / "approval.log").open("wb") as out:
        approval = subprocess.Popen([str(APPROVAL)], env=settings_env(settings), stdout=subprocess.DEVNULL,
                                    stderr=out)
    elevator = start_elevator(settings, tmp_path / "elevator.log", {PASSWORD_ENV: SVC_PASSWORD})
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        poll(lambda: consumers_on(settings, status_queue(settings)) == 1 and
             consumers_on(settings, settings.queue("elevator")) == 1, 30, "jit-approval and jit-elevator consuming")
        client = load_client_module().StatusClient(connection.channel(), exchange=settings.exchange,
                                                   user_id=broker_user(settings.amqp_url))
        before = client.ask("sec-0-0", "alice", "co-launch")
        assert (before["status"], before["action"], before["ready"], before["request_id"]) == (
            "NOT_REQUIRED", "Launch with Elevated Privileges", False, None)  # Launch = request, then wait
        event = requested(secret_id="sec-0-0", host=sim.address, checkout_id="co-launch")
        with Publisher(settings) as publisher:  # 1. publish elevation.requested
            publisher.publish(event.type, event.to_json(), message_id=event.id)
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # 2. poll the status until ready (or wait for elevation.elevated)
            answer = client.ask("sec-0-0", "alice", "co-launch")
            on_host = bool(sim.members(ADMINISTRATORS))
            seen.append((answer["state"], answer["action"], answer["ready"], on_host))
            if answer["ready"]:
                break
            time.sleep(0.05)
        assert seen and seen[-1][2] is True, seen
        # 3. Launch only now: the host confirms the membership, and Launch was never offered before it did.
        assert seen[-1] == ("ELEVATED", "Launch with Elevated Privileges", True, True), seen
        preparing = [s for s in seen if s[0] in ("APPROVED", "ELEVATING")]
        assert preparing and all(s[1] == "Preparing elevated privileges" and s[2] is False for s in preparing), seen
        def published() -> bool:  # (an EventTap, bound to '#', would also see the status queries)
            with factory() as session:
                return session.scalars(select(OutboxEvent.id).where(OutboxEvent.type == "elevation.elevated",
                                       OutboxEvent.published_at.is_not(None))).first() is not None
        poll(published, 10, "elevation.elevated published")
    finally:
        connection.close()
        codes = [stop(approval), stop(elevator)]
        sim.set_command_delay(0)
    assert codes == [0, 0]
