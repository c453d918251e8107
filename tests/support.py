"""Helpers every level of tests shares: watching the events on a test's exchange, and waiting for a condition."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pika
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.consumer import Consumer
from shared.events import EVENT_TYPES
from shared.settings import Settings


def poll(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Wait until `condition()` is truthy and return its value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return value


class EventTap:
    """An exclusive queue of the test's own, bound to every event type: sees every event published on the
    exchange (and not the `status.query` requests, which are not events)."""

    def __init__(self, settings: Settings) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
        self._channel = self._connection.channel()
        self._channel.exchange_declare(exchange=settings.exchange, exchange_type="topic", durable=True)
        self.queue = self._channel.queue_declare(queue="", exclusive=True).method.queue
        for event_type in EVENT_TYPES:
            self._channel.queue_bind(queue=self.queue, exchange=settings.exchange, routing_key=event_type)
        self.seen: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        while True:
            method, _props, body = self._channel.basic_get(queue=self.queue, auto_ack=True)
            if method is None:
                return self.seen
            self.seen.append(json.loads(body))

    def of(self, event_type: str, request_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.drain() if e["type"] == event_type
                and (request_id is None or e["data"].get("request_id") == request_id)]

    def wait_for(self, event_type: str, request_id: str | None = None, count: int = 1,
                 timeout: float = 15.0) -> list[dict[str, Any]]:
        poll(lambda: len(self.of(event_type, request_id)) >= count, timeout,
             f"{count} x {event_type} for {request_id}; seen: {[(e['type'], e['data']) for e in self.seen]}")
        return self.of(event_type, request_id)

    def close(self) -> None:
        self._connection.close()


@contextmanager
def running(consumer: Consumer, *, join_timeout: float = 15.0) -> Iterator[threading.Thread]:
    """Run the consumer on a thread until the block ends, then stop it and require run() to return."""
    thread = threading.Thread(target=consumer.run, name="test-consumer", daemon=True)
    thread.start()
    try:
        assert consumer.ready.wait(10), "consumer did not become ready"
        yield thread
    finally:
        consumer.stop()
        thread.join(join_timeout)
        assert not thread.is_alive(), "run() did not return after stop()"


class Outage:
    """A sessionmaker whose transactions numbered in `failing` (from 1) fail as a database that dropped the
    connection would, before they start; sessions opened without `begin` pass through."""

    def __init__(self, factory: sessionmaker[Session], failing: set[int]) -> None:
        self._factory = factory
        self.failing = failing
        self.begun = 0

    def begin(self) -> Any:
        self.begun += 1
        if self.begun in self.failing:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return self._factory.begin()

    def __call__(self, **kw: Any) -> Session:
        return self._factory(**kw)
