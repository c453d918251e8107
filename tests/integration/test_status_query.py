"""Status over the broker: `status.query` request/reply (direct reply-to), served by every jit-approval replica.

Real broker, both databases, jit-approval in-process with its real consumer, two status servers (the
replicas' query path), and the documented client of docs/status_client.py.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pika
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from services.approval.status_server import StatusServer, status_queue
from shared.amqp.publisher import Publisher
from shared.db.engine import transaction
from shared.db.models import Request, Task
from shared.events import Event
from shared.settings import Settings
from shared.trust import broker_user
from tests.factories import HostSpec, seed_config
from tests.integration.approval_harness import approval_running, decided, poll, requested

pytestmark = [pytest.mark.rabbitmq]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "status_client.py"


def load_client_module() -> Any:
    spec = importlib.util.spec_from_file_location("status_client", DOCS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class World:
    def __init__(self, settings: Settings, factory: sessionmaker[Session], servers: list[StatusServer]) -> None:
        self.settings, self.factory, self.servers = settings, factory, servers
        self.connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
        self.channel = self.connection.channel()
        self.client = load_client_module().StatusClient(self.channel, exchange=settings.exchange,
                                                        user_id=broker_user(settings.amqp_url))
        self.publisher = Publisher(settings)

    def ask(self, secret_id: str = "sec-0-0", user_id: str = "alice",  # noqa: S107 - ids, not passwords
            checkout_id: str | None = None) -> Any:
        return self.client.ask(secret_id, user_id, checkout_id, timeout=10)

    def send(self, event: Event) -> str:
        self.publisher.publish(event.type, event.to_json(), message_id=event.id)
        return getattr(event.data, "request_id", "")

    def state_of(self, request_id: str, state: str) -> None:
        def reached() -> bool:
            with self.factory() as s:
                row = s.get(Request, request_id)
                return row is not None and row.state == state
        poll(reached, 10, f"{request_id} {state}")

    def close(self) -> None:
        self.publisher.close()
        self.connection.close()


@pytest.fixture
def world(settings: Settings, factory: sessionmaker[Session]) -> Iterator[World]:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)], secrets_per_host=3)
    with ExitStack() as stack:
        stack.enter_context(approval_running(settings))
        servers = [stack.enter_context(StatusServer(settings, factory, _clock()).running()) for _ in range(2)]
        for server in servers:
            assert server.ready.wait(10), "status server not ready"
        w = World(settings, factory, servers)
        stack.callback(w.close)
        yield w
    with pika.BlockingConnection(pika.URLParameters(settings.amqp_url)) as conn:
        conn.channel().queue_delete(status_queue(settings))


def _clock() -> Any:
    from shared.clock import SystemClock
    return SystemClock()


def test_the_status_follows_the_request_and_launch_waits_for_the_host(world: World) -> None:
    assert world.ask(user_id="victor") == {
        "status": "NOT_ELIGIBLE", "action": "None (no elevation option)", "request_id": None, "state": None,
        "expires_at": None, "ready": None, "approvals_needed": None,
        "reason": "user victor is a vendor representative; only internal users may request elevation"}
    assert world.ask(checkout_id="co-1")["status"] == "NOT_REQUESTED"
    rid = world.send(requested(checkout_id="co-1"))
    world.state_of(rid, "PENDING")
    pending = world.ask(checkout_id="co-1")
    assert (pending["status"], pending["action"], pending["request_id"], pending["state"], pending["ready"]) == (
        "PENDING", "Pending Approval", rid, "PENDING", False)
    world.send(decided(rid, "bob"))
    world.state_of(rid, "APPROVED")
    approved = world.ask(checkout_id="co-1")
    # Approved, but the membership is not on the host yet: no Launch (a logon token is fixed at logon).
    assert (approved["status"], approved["action"], approved["state"], approved["ready"]) == (
        "APPROVED", "Preparing elevated privileges", "APPROVED", False)
    with world.factory() as s:
        row = s.get(Request, rid)
        assert row is not None and row.expires_at is not None
        assert approved["expires_at"] == row.expires_at.isoformat().replace("+00:00", "Z")
    for state, action, ready in [("ELEVATING", "Preparing elevated privileges", False),
                                 ("ELEVATED", "Launch with Elevated Privileges", True)]:
        with transaction(world.factory) as s:
            s.execute(update(Request).where(Request.id == rid).values(state=state))
        answer = world.ask(checkout_id="co-1")
        assert (answer["status"], answer["action"], answer["state"], answer["ready"]) == ("APPROVED", action,
                                                                                         state, ready)
    assert world.ask(checkout_id="co-other")["status"] == "NOT_REQUESTED"
    assert world.ask()["request_id"] == rid  # without a checkout: the user's latest active request


def test_pending_says_how_many_approvals_are_still_needed(world: World) -> None:
    with transaction(world.factory) as s:
        s.execute(update(Task).values(approvals_required=2))
    rid = world.send(requested(checkout_id="co-2", secret_id="sec-0-1"))
    world.state_of(rid, "PENDING")
    assert world.ask("sec-0-1", checkout_id="co-2")["approvals_needed"] == 2
    world.send(decided(rid, "bob"))
    poll(lambda: world.ask("sec-0-1", checkout_id="co-2")["approvals_needed"] == 1, 10, "one approval counted")
    answer = world.ask("sec-0-1", checkout_id="co-2")
    assert answer["status"] == "PENDING" and "1 more approval(s) (1 of 2)" in answer["reason"]


@pytest.mark.parametrize(("body", "error"), [
    (b"not json", "bad status query"),
    (b'{"secret_id": "sec-0-0"}', "user_id: Field required"),
    (b'{"secret_id": "sec 0", "user_id": "alice"}', "secret_id: Value error"),
    (b'{"secret_id": "sec-0-0", "user_id": "alice", "nonsense": true}', "nonsense: Extra inputs"),
])
def test_a_malformed_query_gets_an_error_reply(world: World, body: bytes, error: str) -> None:
    replies: dict[str, Any] = {}
    channel = world.connection.channel()  # a channel has one direct reply-to consumer: the client holds its own
    channel.basic_consume("amq.rabbitmq.reply-to", lambda _c, _m, p, b: replies.update(
        {p.correlation_id: json.loads(b)}), auto_ack=True)
    cid = str(uuid.uuid4())
    channel.basic_publish(world.settings.exchange, "status.query", body, pika.BasicProperties(
        reply_to="amq.rabbitmq.reply-to", correlation_id=cid, content_type="application/json",
        user_id=broker_user(world.settings.amqp_url)))
    poll(lambda: (world.connection.process_data_events(time_limit=0.1), cid in replies)[1], 10, "error reply")
    assert list(replies[cid]) == ["error"] and error in replies[cid]["error"]
    assert world.ask()["status"] == "NOT_REQUESTED"  # and the replicas keep answering


def test_every_replica_serves_and_one_going_away_loses_nothing(world: World) -> None:
    answers = [world.ask(f"sec-0-{i % 3}", "alice", f"co-{i}") for i in range(60)]
    assert all(a["status"] == "NOT_REQUESTED" for a in answers)
    assert all(server.answered > 0 for server in world.servers), [s.answered for s in world.servers]
    first = world.servers[0]
    first.stopping.set()
    poll(lambda: not first.ready.is_set(), 10, "first replica stopped")
    before = world.servers[1].answered
    assert [world.ask()["status"] for _ in range(10)] == ["NOT_REQUESTED"] * 10
    assert world.servers[1].answered == before + 10
