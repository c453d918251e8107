"""Topology and Publisher against the real broker: properties, confirms, unroutable, nack, reconnect."""

from __future__ import annotations

import time

import pytest

from shared.amqp.publisher import Publisher, PublishError
from shared.amqp.topology import declare_topology
from shared.settings import Settings
from tests.integration import amqp_fixtures
from tests.integration.amqp_fixtures import (
    channel_on,
    get_one,
    rabbitmqctl,
    settings_for,
    vhost_of,
)

pytestmark = pytest.mark.rabbitmq
# The shared fixtures, made visible to pytest in this module.
amqp_vhost = amqp_fixtures.amqp_vhost
amqp_settings = amqp_fixtures.amqp_settings


def test_topology_declares_quorum_queue_with_delivery_limit_and_dead_lettering(amqp_settings: Settings) -> None:
    with channel_on(amqp_settings) as channel:
        assert declare_topology(channel, amqp_settings, "approval", ["elevation.requested"]) == (
            amqp_settings.queue("approval")
        )
        # Idempotent: every replica redeclares on every reconnect.
        declare_topology(channel, amqp_settings, "approval", ["elevation.requested", "elevation.decided"])

    listing = rabbitmqctl("list_queues", "-p", vhost_of(amqp_settings), "name", "type", "durable", "arguments")
    rows = {line.split("\t")[0]: line for line in listing.splitlines()}
    queue = rows[amqp_settings.queue("approval")]
    assert "\tquorum\ttrue\t" in queue
    assert '{"x-delivery-limit",20}' in queue
    assert f'{{"x-dead-letter-exchange","{amqp_settings.exchange}.dlx"}}' in queue
    assert f'{{"x-dead-letter-routing-key","{amqp_settings.queue("approval")}"}}' in queue
    assert "\tquorum\ttrue\t" in rows[f"{amqp_settings.queue('approval')}.dead"]


def test_published_message_is_persistent_cloudevents_with_message_id(amqp_settings: Settings) -> None:
    with channel_on(amqp_settings) as channel:
        queue = declare_topology(channel, amqp_settings, "approval", ["elevation.requested"])
    with Publisher(amqp_settings) as publisher:
        publisher.publish("elevation.requested", b'{"id": "e-1"}', message_id="e-1", headers={"trace": "abc"})

    method, properties, body = get_one(amqp_settings, queue)
    assert body == b'{"id": "e-1"}'
    assert method.routing_key == "elevation.requested"
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/cloudevents+json"
    assert properties.message_id == "e-1"
    assert properties.headers["trace"] == "abc"


def test_unroutable_message_raises_publish_error(amqp_settings: Settings) -> None:
    with Publisher(amqp_settings) as publisher, pytest.raises(PublishError) as raised:
        publisher.publish("nobody.listens", b"{}", message_id="m-404")
    message = str(raised.value)
    assert "unroutable" in message and "'nobody.listens'" in message and "'m-404'" in message


def test_message_nacked_by_broker_raises_publish_error(amqp_settings: Settings) -> None:
    # A queue that is always full and refuses new messages makes the broker nack the publish.
    with channel_on(amqp_settings) as channel:
        channel.exchange_declare(amqp_settings.exchange, exchange_type="topic", durable=True)
        channel.queue_declare("full", durable=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
        channel.queue_bind("full", amqp_settings.exchange, routing_key="to.full")
    with Publisher(amqp_settings) as publisher, pytest.raises(PublishError) as raised:
        publisher.publish("to.full", b"{}", message_id="m-nack")
    assert "nacked" in str(raised.value) and "'m-nack'" in str(raised.value)


def test_idle_publisher_keeps_its_connection_past_the_heartbeat(amqp_vhost: str) -> None:
    settings = settings_for(amqp_vhost, heartbeat=1)
    with channel_on(settings) as channel:
        queue = declare_topology(channel, settings, "reaper", ["secret.checked_in"])
    with Publisher(settings) as publisher:
        publisher.publish("secret.checked_in", b"1", message_id="m-1")
        first = publisher._connection
        time.sleep(4)  # the broker drops a silent client after ~2 heartbeat intervals
        publisher.publish("secret.checked_in", b"2", message_id="m-2")
        assert publisher._connection is first, "the connection was lost while idle and had to be rebuilt"
    assert get_one(settings, queue)[2] == b"1"
    assert get_one(settings, queue)[2] == b"2"


def test_publisher_reconnects_after_the_broker_closed_its_connection(amqp_vhost: str) -> None:
    settings = settings_for(amqp_vhost)
    with channel_on(settings) as channel:
        queue = declare_topology(channel, settings, "elevator", ["elevation.approved"])
    with Publisher(settings) as publisher:
        publisher.publish("elevation.approved", b"before", message_id="m-1")
        rabbitmqctl("close_all_connections", "-p", amqp_vhost, "test: broker-side close")
        publisher.publish("elevation.approved", b"after", message_id="m-2")
    assert get_one(settings, queue)[2] == b"before"
    assert get_one(settings, queue)[2] == b"after"


def test_unreachable_broker_raises_publish_error_after_attempts() -> None:
    settings = Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/%2F", exchange="x", queue_prefix="x")
    with Publisher(settings, connection_attempts=2) as publisher, pytest.raises(PublishError) as raised:
        publisher.publish("elevation.approved", b"{}", message_id="m-down")
    assert "connection failure" in str(raised.value) and "'m-down'" in str(raised.value)


def test_closed_publisher_refuses_to_publish(amqp_settings: Settings) -> None:
    publisher = Publisher(amqp_settings)
    publisher.close()
    publisher.close()  # idempotent
    with pytest.raises(PublishError, match="closed"):
        publisher.publish("elevation.approved", b"{}", message_id="m-closed")


