"""Helpers for jit-approval tests: the daemon in-process with the real Consumer, events in and out.

`EventTap` is an exclusive queue of the test's own bound to the test's exchange with `#`: every
event anyone publishes is seen there, which is how tests observe what the daemon published.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pika

from services.approval.main import NAME, ROUTING_KEYS, processor
from services.approval.sweeper import cancel_expired_pending
from shared.amqp.consumer import Consumer
from shared.daemon import Periodic, Runtime
from shared.events import format_time, new_event
from shared.settings import Settings


class EventTap:
    def __init__(self, settings: Settings) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
        self._channel = self._connection.channel()
        self._channel.exchange_declare(exchange=settings.exchange, exchange_type="topic", durable=True)
        self.queue = self._channel.queue_declare(queue="", exclusive=True).method.queue
        self._channel.queue_bind(queue=self.queue, exchange=settings.exchange, routing_key="#")
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
                 timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(found := self.of(event_type, request_id)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} x {event_type} for {request_id} not seen within {timeout} s; "
                                     f"seen: {[(e['type'], e['data']) for e in self.seen]}")
            time.sleep(0.05)
        return found

    def close(self) -> None:
        self._connection.close()


@contextmanager
def approval_running(settings: Settings) -> Iterator[Runtime]:
    """jit-approval in this process: the real Consumer on a thread, its outbox relay and sweeper."""
    runtime = Runtime.create(NAME, settings)
    consumer = Consumer(settings, NAME, ROUTING_KEYS, runtime.handler(ROUTING_KEYS, processor(runtime.factory,
                                                                                               runtime.clock)))
    sweeper = Periodic("approval.sweeper", settings.sweep_interval_seconds,
                       lambda: cancel_expired_pending(runtime.factory, runtime.clock))
    thread = threading.Thread(target=consumer.run, daemon=True)
    runtime.relay.start()
    sweeper.start(runtime.stopping)
    thread.start()
    try:
        assert consumer.ready.wait(15), "approval consumer did not become ready"
        yield runtime
    finally:
        consumer.stop()
        thread.join(20)
        runtime.stopping.set()
        sweeper.join(5)
        runtime.relay.stop()
        runtime.publisher.close()
        runtime.factory.kw["bind"].dispose()


def requested(request_id: str | None = None, *, secret_id: str = "sec-0-0", host: str = "127.0.0.1",  # noqa: S107
              requester_id: str = "alice", checkout_id: str | None = None, expires_in: float = 3600,
              event_id: str | None = None) -> Any:
    return new_event("elevation.requested", {
        "request_id": request_id or f"req-{uuid.uuid4().hex[:10]}",
        "checkout_id": checkout_id or f"co-{uuid.uuid4().hex[:10]}", "secret_id": secret_id,
        "requester_id": requester_id, "host": host, "justification": "patching",
        "checkout_expires_at": format_time(datetime.now(UTC) + timedelta(seconds=expires_in)),
    }, source="test/workflow", event_id=event_id)


def decided(request_id: str, approver_id: str, decision: str = "approve", reason: str | None = None,
            event_id: str | None = None) -> Any:
    data = {"request_id": request_id, "approver_id": approver_id, "decision": decision}
    if reason:
        data["reason"] = reason
    return new_event("elevation.decided", data, source="test/requests-tab", event_id=event_id)


def poll(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value
