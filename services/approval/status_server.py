"""Status queries over the broker: AMQP request/reply (RabbitMQ direct reply-to), served by every replica.

A query is not an event of the CloudEvents contract, so it has this small path of its own: a queue
`<prefix>.approval.status` bound to `status.query` on the events exchange, on a connection of its own,
on its own thread. Each replica consumes it (competing consumers). A query is answered on a worker
thread (a database read), and the reply is published on the connection's thread to the default
exchange with routing key = the query's `reply_to` and the same `correlation_id`; the query is acked
after its reply. A malformed query gets `{"error": ...}`; one without `reply_to` is dropped (logged).
Queries older than `QUERY_TTL_MS` expire in the queue: their askers have stopped waiting.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any

import pika
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from services.approval.status import answer
from shared.amqp.connection import CONNECTION_ERRORS, backoff_delay, close_quietly, connect, node_of
from shared.amqp.topology import declare_exchange
from shared.amqp.workers import WorkerPool
from shared.clock import Clock
from shared.events import STATUS_QUERY, BadEvent, parse_status_query
from shared.logs import get_logger
from shared.settings import Settings

log = get_logger()
QUERY_TTL_MS = 10_000
REPLY_CONTENT_TYPE = "application/json"


def status_queue(settings: Settings) -> str:
    return settings.queue("approval.status")


class StatusServer:
    def __init__(self, settings: Settings, factory: sessionmaker[Session], clock: Clock,
                 stopping: threading.Event | None = None) -> None:
        self.settings, self.factory, self.clock = settings, factory, clock
        self.stopping = stopping or threading.Event()
        self.ready = threading.Event()
        self._pool = WorkerPool(settings.workers, name="status-worker")
        self.answered = 0  # replies computed by this replica (tests and the benchmark read it)
        self._count = threading.Lock()
        self._thread: threading.Thread | None = None
        self.node: str | None = None  # the broker node of the last connection: a reconnect begins after it

    @contextmanager
    def running(self) -> Iterator[StatusServer]:
        self._thread = threading.Thread(target=self._run, name="status-server", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            self._thread.join(5.0)
            self._pool.shutdown()

    def respond(self, body: bytes, user_id: str | None) -> bytes:
        """The reply's body for one query: the answer, or `{"error": ...}`."""
        allowed = self.settings.allowed_publishers(STATUS_QUERY)
        try:
            if allowed is not None and user_id not in allowed:
                raise BadEvent(f"{STATUS_QUERY} published by broker user {user_id!r}, not an allowed publisher")
            query = parse_status_query(body)
            with self.factory() as session:
                reply: dict[str, Any] = answer(session, query).model_dump()
        except BadEvent as exc:
            log.warning("status.query.rejected", reason=str(exc), publisher=user_id)
            reply = {"error": str(exc)}
        except sa_exc.SQLAlchemyError as exc:
            log.error("status.query.failed", error=str(exc).splitlines()[0][:300])
            reply = {"error": "status unavailable: the database did not answer"}
        with self._count:
            self.answered += 1
        return json.dumps(reply, separators=(",", ":")).encode()

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                self._serve()
                failures = 0
            except CONNECTION_ERRORS as exc:
                self.ready.clear()
                delay = backoff_delay(failures)
                failures += 1
                log.warning("status.server.disconnected", error=repr(exc), retry_in_seconds=round(delay, 2))
                self.stopping.wait(delay)

    def _serve(self) -> None:
        connection = connect(self.settings.amqp_url, name="jit-approval status", after=self.node)
        self.node = node_of(connection)
        try:
            channel = connection.channel()
            declare_exchange(channel, self.settings)
            queue = status_queue(self.settings)
            channel.queue_declare(queue=queue, durable=True, arguments={
                "x-queue-type": self.settings.queue_type, "x-message-ttl": QUERY_TTL_MS})
            channel.queue_bind(queue=queue, exchange=self.settings.exchange, routing_key=STATUS_QUERY)
            channel.basic_qos(prefetch_count=self.settings.prefetch)
            channel.basic_consume(queue=queue, on_message_callback=partial(self._on_message, connection))
            self.ready.set()
            log.info("status.server.ready", queue=queue, node=self.node)
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=0.2)
            self.ready.clear()
        finally:
            close_quietly(connection)  # unacked queries go back to the queue: another replica answers them

    def _on_message(self, connection: Any, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if not properties.reply_to:
            log.warning("status.query.rejected", reason="no reply_to: nowhere to answer")
            channel.basic_ack(delivery_tag=method.delivery_tag)
            return
        future = self._pool.submit(partial(self.respond, body, properties.user_id))

        def settle(done: Any) -> None:
            reply = done.result()
            with suppress(*CONNECTION_ERRORS):  # the connection is gone: the broker redelivers the query
                connection.add_callback_threadsafe(partial(self._reply, channel, method.delivery_tag, properties,
                                                           reply))

        future.add_done_callback(settle)

    @staticmethod
    def _reply(channel: Any, tag: int, properties: Any, reply: bytes) -> None:
        if not channel.is_open:
            return
        channel.basic_publish(exchange="", routing_key=properties.reply_to, body=reply, properties=pika.BasicProperties(
            correlation_id=properties.correlation_id, content_type=REPLY_CONTENT_TYPE))
        channel.basic_ack(delivery_tag=tag)
