"""Decisions are accepted only from the broker users JIT_DECISION_PUBLISHERS names; the broker vouches for them."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.publisher import Publisher
from shared.db.models import Request
from shared.settings import Settings
from tests.factories import HostSpec, seed_config
from tests.integration.approval_harness import approval_running, decided, poll, requested

pytestmark = [pytest.mark.rabbitmq]


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


@pytest.fixture
def decider(settings: Settings) -> Iterator[tuple[str, str]]:
    user, password = f"decider-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    vhost = pika.URLParameters(settings.amqp_url).virtual_host
    for args in (["add_user", user, password], ["set_permissions", "-p", vhost, user, ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)
    yield user, password
    subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60, check=False)


def state(factory: sessionmaker[Session], request_id: str) -> str | None:
    with factory() as s:
        row = s.get(Request, request_id)
        return row.state if row else None


def test_only_the_named_broker_users_may_decide(settings: Settings, factory: sessionmaker[Session],
                                                decider: tuple[str, str]) -> None:
    user, password = decider
    locked = settings.model_copy(update={"decision_publishers": f"{user}, jitctl"})
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    with approval_running(locked) as runtime:
        request = requested()
        runtime.publisher.publish(request.type, request.to_json(), message_id=request.id)
        rid = request.data.request_id  # type: ignore[attr-defined]
        poll(lambda: state(factory, rid) == "PENDING", 10, "PENDING")

        forged = decided(rid, "bob")  # guest is not a decision publisher: refused, dead-lettered
        runtime.publisher.publish(forged.type, forged.to_json(), message_id=forged.id)
        dead = f"{locked.queue('approval')}.dead"
        probe = pika.BlockingConnection(pika.URLParameters(locked.amqp_url))
        channel = probe.channel()
        poll(lambda: channel.queue_declare(dead, passive=True).method.message_count == 1, 10, "the dead letter")
        probe.close()
        assert state(factory, rid) == "PENDING"

        genuine = decided(rid, "bob")
        with Publisher(locked.model_copy(update={"amqp_url": as_user(locked.amqp_url, user, password)})) as p:
            p.publish(genuine.type, genuine.to_json(), message_id=genuine.id)
        poll(lambda: state(factory, rid) == "APPROVED", 10, "APPROVED by the genuine decision")


def test_the_broker_refuses_a_user_id_that_is_not_the_connections(settings: Settings) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.exchange_declare(settings.exchange, exchange_type="topic", durable=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="user_id property set to 'jitctl'"):
        channel.basic_publish(settings.exchange, "elevation.decided", b"{}",
                              pika.BasicProperties(user_id="jitctl"))
    connection.close()
