"""A daemon's consuming loop: connect, declare, consume, reconnect forever, and drain on stop.

Owns the connection's thread (the one that calls `run`), the reconnect policy and the shutdown
sequence of contract section 1: on SIGTERM stop taking messages, finish or requeue what is in
flight within the grace period, return so the process exits 0. Per-connection delivery handling
lives in `session.py`; handlers run on a bounded pool of worker threads (`workers.py`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType

import pika.exceptions

from shared.amqp.connection import CONNECTION_ERRORS, backoff_delay, close_quietly, connect, node_of
from shared.amqp.delivery import Delivery, Outcome
from shared.amqp.session import Handler, Session, Tally
from shared.amqp.topology import declare_topology
from shared.amqp.workers import WorkerPool
from shared.health import Heartbeat
from shared.logs import get_logger
from shared.settings import Settings

__all__ = ["Consumer", "Delivery", "Handler", "Outcome"]

log = get_logger()

# How long the connection thread blocks in pika between checks of the stop flag. stop() from another
# thread wakes it at once; a signal handler does not (see install_signal_handlers), so this bounds
# how late a SIGTERM is noticed.
_POLL_SECONDS = 0.5


class Consumer:
    """Competing consumer of one daemon's queue; `run()` blocks until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        daemon: str,
        routing_keys: Sequence[str],
        handler: Handler,
        *,
        workers: int | None = None,
        prefetch: int | None = None,
        stopping: threading.Event | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self._settings = settings
        self._daemon = daemon
        self._routing_keys = tuple(routing_keys)
        self._handler = handler
        self._workers = workers or settings.workers
        self._prefetch = prefetch or settings.prefetch
        self._ready = threading.Event()
        self._stopping = stopping or threading.Event()
        self._session_lock = threading.Lock()
        self._session: Session | None = None
        self._failures = 0
        self._stop_reason = "stop()"
        self._tally = Tally()
        self._heartbeat = heartbeat or Heartbeat(f"{daemon}-consumer")
        self._connected = False
        self._node: str | None = None  # the broker node of the last connection (host:port)

    @property
    def ready(self) -> threading.Event:
        """Set while consuming; cleared on connection loss and on stop."""
        return self._ready

    @property
    def connected(self) -> bool:
        """Whether the consuming connection to the broker is open (a readiness check)."""
        return self._connected

    def stop(self) -> None:
        """Thread-safe and idempotent: `run()` drains and returns."""
        self._stopping.set()
        with self._session_lock:
            session = self._session
        if session is not None:
            session.wake()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the consumer. Call from the main thread (Python's rule for signals)."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            # Only note it and set the flag: the handler runs on the main thread between bytecodes,
            # possibly while that thread holds a pika lock or is half-way through writing a log line
            # to stderr (a second write there raises "reentrant call"); the run loop logs it instead.
            self._stop_reason = signal.Signals(signum).name
            self._stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> None:
        pool = WorkerPool(self._workers, name=f"{self._daemon}-worker")
        try:
            while not self._stopping.is_set():
                self._heartbeat.beat()
                try:
                    self._consume(pool)
                except CONNECTION_ERRORS as exc:
                    self._ready.clear()
                    if self._stopping.is_set():
                        log.warning("amqp.connection.lost", daemon=self._daemon, error=repr(exc), stopping=True)
                        break
                    delay = backoff_delay(self._failures)
                    self._failures += 1
                    log.warning("amqp.connection.lost", daemon=self._daemon, error=repr(exc),
                                retry_in_seconds=round(delay, 2), failures=self._failures)
                    self._stopping.wait(delay)
        finally:
            self._ready.clear()
            self._heartbeat.stopped = True
            pool.shutdown()
            log.info("consumer.stopped", daemon=self._daemon, **self._tally.snapshot())

    def _consume(self, pool: WorkerPool) -> None:
        """One connection's life: returns after a drained stop, raises when the connection is lost."""
        connection = connect(self._settings.amqp_url, name=f"jit-{self._daemon} consumer", after=self._node)
        self._node = node_of(connection)
        self._connected = True
        session: Session | None = None
        try:
            channel = connection.channel()
            queue = declare_topology(channel, self._settings, self._daemon, self._routing_keys)
            channel.basic_qos(prefetch_count=self._prefetch)
            session = Session(connection, channel, pool, self._handler,
                              max_bytes=self._settings.max_event_bytes, tally=self._tally)
            session.start(queue)
            with self._session_lock:
                self._session = session
            self._failures = 0
            self._ready.set()
            log.info("amqp.consumer.ready", daemon=self._daemon, queue=queue, prefetch=self._prefetch,
                     workers=self._workers, node=self._node)
            while not self._stopping.is_set():
                self._heartbeat.beat()
                connection.process_data_events(time_limit=_POLL_SECONDS)
                if not session.consuming:
                    # The broker cancelled us (e.g. the queue was deleted): redeclare and consume again.
                    raise pika.exceptions.ConsumerCancelled(f"consumer on {queue} cancelled by the broker")
            self._ready.clear()
            log.info("consumer.stopping", daemon=self._daemon, reason=self._stop_reason,
                     in_flight=len(session.inflight), grace_seconds=self._settings.shutdown_grace_seconds)
            session.drain(self._settings.shutdown_grace_seconds)
        finally:
            with self._session_lock:
                self._session = None
            if session is not None:
                # Handlers not yet started would only duplicate the broker's redelivery of their messages.
                session.cancel_queued()
            self._connected = False
            close_quietly(connection)
