"""Publishing one event to the exchange, confirmed by the broker, from any thread.

Owns the publisher's own connection (never a consumer's): publisher confirms, mandatory routing,
persistent messages, one reconnect-and-retry when the connection was lost, and a small
heartbeat pump so an idle publisher's connection is not dropped by the broker between events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from types import TracebackType

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from shared.amqp.connection import (
    CONNECTION_ERRORS,
    backoff_delay,
    close_quietly,
    connection_parameters,
    heartbeat_of,
    node_of,
    rotated,
)
from shared.amqp.topology import declare_exchange
from shared.logs import get_logger
from shared.settings import Settings

CONTENT_TYPE = "application/cloudevents+json"
PERSISTENT = 2

log = get_logger()


class PublishError(Exception):
    """The broker did not take the message: nacked, unroutable, or the connection failed after retries."""


class Publisher:
    """A blocking, thread-safe publisher; `publish` returns only once the broker confirmed the message."""

    def __init__(self, settings: Settings, *, connection_attempts: int = 3) -> None:
        self._settings = settings
        self._attempts = max(1, connection_attempts)
        self._params = connection_parameters(settings.amqp_url, name="jit publisher")
        # pika connections are not thread-safe: every use of the connection holds this lock.
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._node: str | None = None  # the broker node of the last connection: a reconnect begins after it
        self._channel: BlockingChannel | None = None
        self._closed = False
        self._stop_pump = threading.Event()
        heartbeat = heartbeat_of(self._params[0])  # one setting for every node: the first one's
        self._pump_interval = min(max(heartbeat / 2, 0.5), 10.0) if heartbeat else 10.0
        self._pump = threading.Thread(target=self._pump_heartbeats, name="amqp-publisher-heartbeat", daemon=True)
        self._pump.start()

    def publish(
        self, routing_key: str, body: bytes, *, message_id: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish and wait for the broker's confirm; raise PublishError if it was not taken."""
        what = f"routing key {routing_key!r}, message id {message_id!r}"
        properties = pika.BasicProperties(
            delivery_mode=PERSISTENT,
            content_type=CONTENT_TYPE,
            message_id=message_id,
            headers=dict(headers) if headers else None,
            # Validated by the broker, so consumers can tell which broker user published (see user_id).
            user_id=getattr(self._params[0].credentials, "username", None),
        )
        with self._lock:
            if self._closed:
                raise PublishError(f"publisher is closed: {what}")
            # A lost connection is only noticed when we use it: reconnect and try exactly once more.
            for attempt in (1, 2):
                channel = self._ensure_channel(what)
                try:
                    channel.basic_publish(
                        self._settings.exchange, routing_key, body, properties, mandatory=True
                    )
                    return
                except pika.exceptions.UnroutableError:
                    raise PublishError(f"unroutable (no queue is bound for it): {what}") from None
                except pika.exceptions.NackError:
                    raise PublishError(f"nacked by the broker: {what}") from None
                except CONNECTION_ERRORS as exc:
                    self._discard()
                    if attempt == 2:
                        raise PublishError(f"connection failure: {what}: {exc!r}") from exc
                    log.warning("amqp.publish.retrying", routing_key=routing_key, message_id=message_id,
                                error=repr(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._stop_pump.set()
        with self._lock:
            self._closed = True
            self._discard()
        self._pump.join(timeout=5)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _ensure_channel(self, what: str) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._discard()
        last: BaseException | None = None
        for attempt in range(self._attempts):
            if attempt:
                # Sleeping under the lock is deliberate: other publishers would only fail the same way.
                time.sleep(backoff_delay(attempt - 1))
            try:
                connection = pika.BlockingConnection(rotated(self._params, self._node))
                self._node = node_of(connection)
            except CONNECTION_ERRORS as exc:
                last = exc
                log.warning("amqp.connection.failed", attempt=attempt + 1, error=repr(exc))
                continue
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                declare_exchange(channel, self._settings)
            except CONNECTION_ERRORS as exc:
                last = exc
                close_quietly(connection)
                continue
            self._connection, self._channel = connection, channel
            return channel
        raise PublishError(f"connection failure after {self._attempts} attempts: {what}: {last!r}")

    def _discard(self) -> None:
        close_quietly(self._connection)
        self._connection, self._channel = None, None

    def _pump_heartbeats(self) -> None:
        # BlockingConnection only answers heartbeats while someone drives its I/O; between publishes
        # nobody does, so without this an idle publisher is disconnected after ~2 heartbeat intervals.
        while not self._stop_pump.wait(self._pump_interval):
            with self._lock:
                if self._connection is None:
                    continue
                try:
                    self._connection.process_data_events(time_limit=0)
                except CONNECTION_ERRORS as exc:
                    log.warning("amqp.connection.lost", role="publisher", error=repr(exc))
                    self._discard()
