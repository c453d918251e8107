"""Two `jit-approval` processes on one queue, two approvers deciding the same requests at once.

Each request must get exactly one decision and one approved-or-denied event, with the loser in the
audit trail as ignored: compare-and-set across real processes, on both databases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.publisher import Publisher
from shared.db.models import AuditEntry, Request
from shared.settings import Settings
from tests.conftest import settings_env
from tests.factories import HostSpec, seed_config
from tests.integration.approval_harness import EventTap, decided, poll, requested

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
REQUESTS = 50
JIT_APPROVAL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "jit-approval")


@pytest.fixture
def replicas(settings: Settings, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = settings_env(settings)
    procs = []
    for i in range(2):
        with (tmp_path / f"approval-{i}.log").open("wb") as log:
            procs.append(subprocess.Popen([JIT_APPROVAL], env=env, stdout=log, stderr=subprocess.STDOUT))
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    # Contract section 1: SIGTERM drains and exits 0 within 30 s.
    assert [proc.wait(30) for proc in procs] == [0, 0]


def wait_for_consumers(settings: Settings, count: int) -> None:
    # The daemons declare their queue when ready; until then a publish would be unroutable.
    vhost = pika.URLParameters(settings.amqp_url).virtual_host

    def bound() -> bool:
        probe = subprocess.run(["rabbitmqctl", "-q", "list_consumers", "-p", vhost], capture_output=True, text=True,
                               check=False)
        return probe.stdout.count(settings.queue("approval") + "\t") >= count
    poll(bound, 30, f"{count} approval consumers")


def test_two_replicas_two_approvers_one_decision_each(settings: Settings, factory: sessionmaker[Session],
                                                       replicas: list[subprocess.Popen[bytes]]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)], secrets_per_host=REQUESTS)
    tap = EventTap(settings)
    wait_for_consumers(settings, 2)
    ids = [f"req-{i:03d}" for i in range(REQUESTS)]
    with Publisher(settings) as pub:
        for i, rid in enumerate(ids):
            event = requested(rid, secret_id=f"sec-0-{i}")
            pub.publish(event.type, event.to_json(), message_id=event.id)

    def pending() -> bool:
        with factory() as s:
            return s.scalar(select(func.count()).where(Request.state == "PENDING")) == REQUESTS
    poll(pending, 30, "all requests PENDING")

    def vote(approver: str, decision: str) -> None:
        with Publisher(settings) as pub:
            for rid in ids:
                event = decided(rid, approver, decision, "conflict test")
                pub.publish(event.type, event.to_json(), message_id=event.id)

    threads = [threading.Thread(target=vote, args=("bob", "approve")),
               threading.Thread(target=vote, args=("carol", "deny"))]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def all_decided() -> bool:
        with factory() as s:
            return s.scalar(select(func.count()).where(Request.state.in_(["APPROVED", "DENIED"]))) == REQUESTS
    poll(all_decided, 60, "every request decided")

    def losers_audited() -> bool:
        with factory() as s:
            return s.scalar(select(func.count()).where(AuditEntry.action == "decision.ignored")) == REQUESTS
    poll(losers_audited, 60, "every losing decision audited")
    outcomes = Counter[str]()
    poll(lambda: len(tap.of("elevation.approved")) + len(tap.of("elevation.denied")) >= REQUESTS, 30, "events")
    with factory() as s:
        for rid in ids:
            row = s.get(Request, rid)
            assert row is not None
            outcomes[row.state] += 1
            published = tap.of("elevation.approved", rid) + tap.of("elevation.denied", rid)
            assert len(published) == 1, (rid, published)
            audit = s.scalars(select(AuditEntry).where(AuditEntry.request_id == rid)).all()
            decisions = [a for a in audit if a.action in ("approve", "deny")]
            ignored = [a for a in audit if a.action == "decision.ignored"]
            assert len(decisions) == 1 and len(ignored) == 1, (rid, [(a.action, a.actor) for a in audit])
            assert {decisions[0].actor, ignored[0].actor} == {"bob", "carol"}
            assert row.approver_id == decisions[0].actor
    tap.close()
    print(f"\n{REQUESTS} requests decided by two replicas in {time.monotonic() - started:.2f} s: {dict(outcomes)}; "
          f"pids {[p.pid for p in replicas]} (this pid {os.getpid()})")
    assert all(p.poll() is None for p in replicas)
