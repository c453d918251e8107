"""Consumer against the real broker: outcomes, dead-lettering, heartbeats, bounds, draining, reconnect."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from shared.amqp.consumer import Consumer, Delivery, Outcome
from shared.amqp.publisher import Publisher
from shared.settings import Settings
from tests.integration import amqp_fixtures
from tests.integration.amqp_fixtures import (
    get_one,
    rabbitmqctl,
    ready_count,
    settings_for,
    vhost_of,
    wait_for,
)
from tests.support import running

pytestmark = pytest.mark.rabbitmq
# The shared fixtures, made visible to pytest in this module.
amqp_vhost = amqp_fixtures.amqp_vhost
amqp_settings = amqp_fixtures.amqp_settings
fresh_amqp_settings = amqp_fixtures.fresh_amqp_settings

KEY = "elevation.requested"


class Recorder:
    """A handler that records every delivery and answers with `answer(delivery)`."""

    def __init__(self, answer: Callable[[Delivery], Outcome] = lambda _: Outcome.ACK) -> None:
        self.answer = answer
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()

    def __call__(self, delivery: Delivery) -> Outcome:
        with self._lock:
            self.deliveries.append(delivery)
        return self.answer(delivery)


def publish(settings: Settings, *bodies: bytes, key: str = KEY) -> None:
    with Publisher(settings) as publisher:
        for n, body in enumerate(bodies):
            publisher.publish(key, body, message_id=f"m-{n}", headers={"trace": f"t-{n}"})


def consumer(settings: Settings, handler: Callable[[Delivery], Outcome], **kwargs: int) -> Consumer:
    return Consumer(settings, "approval", [KEY], handler, **kwargs)


def test_round_trip_hands_the_handler_every_property_and_acks(amqp_settings: Settings) -> None:
    handler = Recorder()
    with running(consumer(amqp_settings, handler)):
        publish(amqp_settings, b'{"id": "m-0"}')
        wait_for(lambda: len(handler.deliveries) == 1, what="the delivery")
    delivery = handler.deliveries[0]
    assert delivery.body == b'{"id": "m-0"}'
    assert delivery.routing_key == KEY
    assert delivery.message_id == "m-0"
    assert delivery.redelivered is False
    assert delivery.delivery_count in (None, 0)
    assert delivery.headers["trace"] == "t-0"
    assert ready_count(amqp_settings, amqp_settings.queue("approval")) == 0


def test_reject_dead_letters_at_once(amqp_settings: Settings) -> None:
    handler = Recorder(lambda _: Outcome.REJECT)
    with running(consumer(amqp_settings, handler)):
        publish(amqp_settings, b"poison")
        _, properties, body = get_one(amqp_settings, amqp_settings.queue("approval") + ".dead")
    assert body == b"poison"
    assert properties.headers["x-death"][0]["routing-keys"] == [KEY]
    assert len(handler.deliveries) == 1


def test_requeue_forever_is_dead_lettered_by_the_quorum_delivery_limit(amqp_vhost: str) -> None:
    settings = settings_for(amqp_vhost, delivery_limit=2)
    handler = Recorder(lambda _: Outcome.REQUEUE)
    with running(consumer(settings, handler)):
        publish(settings, b"always-fails")
        _, _, body = get_one(settings, settings.queue("approval") + ".dead", timeout=10)
    assert body == b"always-fails"
    # Delivered once, then redelivered delivery_limit times, then dead-lettered.
    assert len(handler.deliveries) == settings.delivery_limit + 1
    assert [d.redelivered for d in handler.deliveries] == [False, True, True]
    assert [d.delivery_count for d in handler.deliveries][1:] == [1, 2]


def test_handler_crash_is_logged_and_requeued(amqp_settings: Settings) -> None:
    def answer(delivery: Delivery) -> Outcome:
        if not delivery.redelivered:
            raise RuntimeError("database went away")
        return Outcome.ACK

    handler = Recorder(answer)
    with capture_logs() as logs, running(consumer(amqp_settings, handler)):
        publish(amqp_settings, b"x")
        wait_for(lambda: len(handler.deliveries) == 2, what="the redelivery")
    crashed = [e for e in logs if e["event"] == "amqp.handler.crashed"]
    assert len(crashed) == 1 and crashed[0]["exc_info"] is True and crashed[0]["log_level"] == "error"
    assert handler.deliveries[1].redelivered and handler.deliveries[1].delivery_count == 1
    stopped = next(e for e in logs if e["event"] == "consumer.stopped")
    assert stopped["crashed"] == 1 and stopped["requeued"] == 1 and stopped["acked"] == 1


def test_oversized_body_is_rejected_before_the_handler(amqp_vhost: str) -> None:
    settings = settings_for(amqp_vhost, max_event_bytes=1024)
    handler = Recorder()
    with capture_logs() as logs, running(consumer(settings, handler)):
        publish(settings, b"x" * 2000)
        _, _, body = get_one(settings, settings.queue("approval") + ".dead")
    assert len(body) == 2000 and handler.deliveries == []
    rejected = [e for e in logs if e["event"] == "event.rejected"]
    assert rejected[0]["reason"] == "oversized body: 2000 bytes > 1024"


def test_slow_handler_keeps_the_connection_alive_and_is_acked_after(amqp_vhost: str) -> None:
    settings = settings_for(amqp_vhost, heartbeat=1)

    def slow(_: Delivery) -> Outcome:
        time.sleep(4)  # the broker drops a client silent for ~2 heartbeat intervals
        return Outcome.ACK

    handler = Recorder(slow)
    with capture_logs() as logs, running(consumer(settings, handler)):
        publish(settings, b"slow")
        wait_for(lambda: any(e["event"] == "amqp.consumer.ready" for e in logs), what="ready log")
        wait_for(lambda: len(handler.deliveries) == 1, what="the delivery")
        time.sleep(4.5)
    assert not [e for e in logs if e["event"] == "amqp.connection.lost"]
    assert len(handler.deliveries) == 1
    assert next(e for e in logs if e["event"] == "consumer.stopped")["acked"] == 1
    assert ready_count(settings, settings.queue("approval")) == 0


@pytest.mark.parametrize(("prefetch", "workers", "bound"), [(3, 8, 3), (8, 2, 2)])
def test_in_flight_handlers_are_bounded_by_prefetch_and_workers(
    amqp_vhost: str, prefetch: int, workers: int, bound: int
) -> None:
    settings = settings_for(amqp_vhost)
    lock = threading.Lock()
    now, peak = [0], [0]

    def busy(_: Delivery) -> Outcome:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.2)
        with lock:
            now[0] -= 1
        return Outcome.ACK

    handler = Recorder(busy)
    with running(consumer(settings, handler, prefetch=prefetch, workers=workers)):
        publish(settings, *[b"m"] * 10)
        wait_for(lambda: len(handler.deliveries) == 10, timeout=10, what="all ten")
    assert peak[0] == bound


def test_stop_waits_for_the_in_flight_handler_and_acks_it(amqp_settings: Settings) -> None:
    started, finished = threading.Event(), threading.Event()

    def slow(_: Delivery) -> Outcome:
        started.set()
        time.sleep(1)
        finished.set()
        return Outcome.ACK

    the_consumer = consumer(amqp_settings, slow)
    with capture_logs() as logs:
        with running(the_consumer):
            publish(amqp_settings, b"in-flight")
            assert started.wait(5)
            the_consumer.stop()
        assert finished.is_set(), "run() returned before the in-flight handler finished"
    stopped = next(e for e in logs if e["event"] == "consumer.stopped")
    assert stopped["acked"] == 1 and stopped["requeued_at_stop"] == 0
    assert ready_count(amqp_settings, amqp_settings.queue("approval")) == 0


def test_handler_past_the_grace_period_has_its_message_requeued(amqp_vhost: str) -> None:
    settings = settings_for(amqp_vhost, shutdown_grace_seconds=0.5)
    started, release = threading.Event(), threading.Event()

    def stuck(_: Delivery) -> Outcome:
        started.set()
        release.wait(10)
        return Outcome.ACK

    try:
        stuck_consumer = consumer(settings, stuck)
        with running(stuck_consumer, join_timeout=3):
            publish(settings, b"stuck")
            assert started.wait(5)
            began = time.monotonic()
            stuck_consumer.stop()
        assert time.monotonic() - began < 2.5
        handler = Recorder()
        with running(consumer(settings, handler)):
            wait_for(lambda: len(handler.deliveries) == 1, what="the redelivery")
        assert handler.deliveries[0].body == b"stuck" and handler.deliveries[0].redelivered
    finally:
        release.set()


def test_stop_before_run_makes_run_return_at_once(amqp_settings: Settings) -> None:
    idle = consumer(amqp_settings, Recorder())
    idle.stop()
    idle.stop()
    idle.run()
    assert not idle.ready.is_set()


def test_consumer_reconnects_after_the_broker_closed_its_connection(fresh_amqp_settings: Settings) -> None:
    settings = fresh_amqp_settings
    handler = Recorder()
    the_consumer = consumer(settings, handler)
    with capture_logs() as logs, running(the_consumer):
        publish(settings, b"before")
        wait_for(lambda: len(handler.deliveries) == 1, what="the first delivery")
        rabbitmqctl("close_all_connections", "-p", vhost_of(settings), "test: broker-side close")
        wait_for(lambda: any(e["event"] == "amqp.connection.lost" for e in logs), what="the loss")
        assert the_consumer.ready.wait(15), "did not reconnect"
        publish(settings, b"after")
        wait_for(lambda: len(handler.deliveries) == 2, what="a delivery after the reconnect")
    assert [d.body for d in handler.deliveries] == [b"before", b"after"]
    assert sum(e["event"] == "amqp.consumer.ready" for e in logs) == 2


def test_consumer_redeclares_and_resumes_when_its_queue_is_deleted(amqp_settings: Settings) -> None:
    handler = Recorder()
    the_consumer = consumer(amqp_settings, handler)
    with capture_logs() as logs, running(the_consumer):
        rabbitmqctl("delete_queue", "-p", vhost_of(amqp_settings), amqp_settings.queue("approval"))
        wait_for(lambda: sum(e["event"] == "amqp.consumer.ready" for e in logs) == 2, timeout=10,
                 what="consuming again")
        publish(amqp_settings, b"after")
        wait_for(lambda: len(handler.deliveries) == 1, what="a delivery after the redeclare")
    assert any(e["event"] == "amqp.connection.lost" and "cancelled" in e["error"] for e in logs)
