"""A JIT_AMQP_URL of several nodes whose first is down: the consumer, the publisher and jitctl's connection take
the next node, on the real broker. (Failing over while running, on a real three-node cluster, is
tests/e2e/test_cluster_failover.py.)"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from structlog.testing import capture_logs

from shared.amqp.connection import close_quietly, connect, node_of
from shared.amqp.consumer import Consumer, Delivery, Outcome
from shared.amqp.publisher import Publisher
from shared.settings import Settings
from tests.integration import amqp_fixtures
from tests.integration.amqp_fixtures import wait_for
from tests.private_servers import free_port
from tests.support import running

pytestmark = pytest.mark.rabbitmq
amqp_vhost = amqp_fixtures.amqp_vhost
amqp_settings = amqp_fixtures.amqp_settings


def test_a_node_that_is_down_is_passed_over(amqp_settings: Settings) -> None:
    live = amqp_settings.amqp_url
    vhost = urlsplit(live).path
    nodes = f"amqp://guest:guest@127.0.0.1:{free_port()}{vhost}, {live}"  # nothing listens on the first
    settings = amqp_settings.model_copy(update={"amqp_url": nodes})
    received: list[Delivery] = []

    def handler(delivery: Delivery) -> Outcome:
        received.append(delivery)
        return Outcome.ACK

    with capture_logs() as logs, running(Consumer(settings, "approval", ["elevation.requested"], handler)):
        with Publisher(settings) as publisher:
            publisher.publish("elevation.requested", b"{}", message_id="m-1")
        wait_for(lambda: len(received) == 1, what="the delivery through the second node")
    [ready] = [line for line in logs if line["event"] == "amqp.consumer.ready"]
    assert ready["node"] == f"127.0.0.1:{urlsplit(live).port or 5672}"
    connection = connect(nodes, name="test")
    try:
        assert node_of(connection) == ready["node"]
    finally:
        close_quietly(connection)
