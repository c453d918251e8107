"""One consuming connection's deliveries: hand each to a worker, settle it on the connection's thread.

The pika callback only decodes and submits, so the connection thread keeps answering heartbeats
however long a handler takes. A worker finishes the handler (which commits its own transaction)
and only then asks the connection thread, through add_callback_threadsafe, to ack or nack: ack
after commit. On stop, `drain` waits a bounded time for in-flight handlers and requeues the rest.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from shared.amqp.connection import CONNECTION_ERRORS
from shared.amqp.delivery import Delivery, Outcome
from shared.amqp.workers import WorkerPool
from shared.logs import bound, get_logger

log = get_logger()

Handler = Callable[[Delivery], Outcome]


class Tally:
    """Counters for the one summary line at stop; bumped from the connection thread and from workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("received", "acked", "rejected", "requeued", "crashed", "requeued_at_stop", "settle_lost"), 0
        )

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Session:
    """Deliveries of one connection and channel; every method but `_on_done` and `wake` runs on its thread."""

    def __init__(
        self, connection: Any, channel: Any, pool: WorkerPool, handler: Handler, *, max_bytes: int, tally: Tally
    ) -> None:
        self.connection = connection
        self.channel = channel
        self._pool = pool
        self._handler = handler
        self._max_bytes = max_bytes
        self._tally = tally
        # delivery tag -> its handler's future; a tag leaves once acked/nacked (tags die with the channel).
        self.inflight: dict[int, Future[Outcome]] = {}
        self._consumer_tag: str | None = None

    def start(self, queue: str) -> None:
        self._consumer_tag = self.channel.basic_consume(queue=queue, on_message_callback=self._on_message)

    @property
    def consuming(self) -> bool:
        return self._consumer_tag is not None and self._consumer_tag in self.channel.consumer_tags

    def wake(self) -> None:
        """From any thread: make the connection thread's process_data_events return now."""
        # Already closed: the run loop is about to notice anyway.
        with contextlib.suppress(*CONNECTION_ERRORS):
            self.connection.add_callback_threadsafe(lambda: None)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._tally.add("received")
        tag = method.delivery_tag
        if len(body) > self._max_bytes:
            log.warning("event.rejected", reason=f"oversized body: {len(body)} bytes > {self._max_bytes}",
                        event_id=properties.message_id, routing_key=method.routing_key)
            channel.basic_nack(delivery_tag=tag, requeue=False)
            self._tally.add("rejected")
            return
        future = self._pool.submit(partial(self._run_handler, Delivery.from_pika(method, properties, body)))
        self.inflight[tag] = future
        future.add_done_callback(partial(self._on_done, tag))

    def _run_handler(self, delivery: Delivery) -> Outcome:
        with bound(event_id=delivery.message_id):
            try:
                return self._handler(delivery)
            except Exception:
                # Requeue: the delivery limit dead-letters it if the crash is not transient.
                log.error("amqp.handler.crashed", routing_key=delivery.routing_key,
                          delivery_count=delivery.delivery_count, exc_info=True)
                self._tally.add("crashed")
                return Outcome.REQUEUE

    def _on_done(self, tag: int, future: Future[Outcome]) -> None:
        if future.cancelled():
            return  # cancelled while queued: whoever cancelled it requeues it
        outcome = Outcome.REQUEUE if future.exception() is not None else future.result()
        try:
            self.connection.add_callback_threadsafe(partial(self._settle, tag, outcome))
        except CONNECTION_ERRORS:
            # The channel that delivered it is gone with its tags; the broker redelivers it, and the
            # handler is idempotent, so the second run is a no-op.
            self._tally.add("settle_lost")
            log.info("amqp.settle.lost", delivery_tag=tag, outcome=outcome.name)

    def _settle(self, tag: int, outcome: Outcome) -> None:
        if self.inflight.pop(tag, None) is None or not self.channel.is_open:
            return  # already requeued by drain, or the channel died (the broker redelivers)
        if outcome is Outcome.ACK:
            self.channel.basic_ack(delivery_tag=tag)
            self._tally.add("acked")
        elif outcome is Outcome.REJECT:
            self.channel.basic_nack(delivery_tag=tag, requeue=False)
            self._tally.add("rejected")
        else:
            self.channel.basic_nack(delivery_tag=tag, requeue=True)
            self._tally.add("requeued")

    def cancel_queued(self) -> list[int]:
        """Cancel handlers that have not started; return their tags. Thread-safe (Future.cancel is)."""
        return [tag for tag, future in list(self.inflight.items()) if future.cancel()]

    def drain(self, grace_seconds: float) -> None:
        """Stop taking messages, wait up to the grace for running handlers, requeue whatever is left."""
        if self._consumer_tag is not None:
            # pika also nacks (with requeue) what the broker sent but was not yet dispatched to us.
            self.channel.basic_cancel(self._consumer_tag)
        for tag in self.cancel_queued():
            self._requeue_at_stop(tag)
        deadline = time.monotonic() + grace_seconds
        while self.inflight and (remaining := deadline - time.monotonic()) > 0:
            self.connection.process_data_events(time_limit=min(remaining, 0.5))
        for tag in list(self.inflight):
            self._requeue_at_stop(tag)

    def _requeue_at_stop(self, tag: int) -> None:
        self.inflight.pop(tag, None)
        self.channel.basic_nack(delivery_tag=tag, requeue=True)
        self._tally.add("requeued_at_stop")
