"""The composition root every daemon shares: settings, logging, database, publisher, outbox relay, consumer.

A daemon supplies its name, the routing keys it consumes, one `process(event)` function and any
periodic jobs (the sweeper). `process` runs on a worker thread, never on the pika connection's
thread; it commits its own transactions and returns, and only then is the message acked.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared import logs
from shared.amqp.connection import CONNECTION_ERRORS, backoff_delay, close_quietly, connect
from shared.amqp.consumer import Consumer, Delivery, Outcome
from shared.amqp.deadletters import DeadLetterWatch
from shared.amqp.publisher import Publisher
from shared.clock import Clock, SystemClock
from shared.db.engine import make_engine, session_factory
from shared.db.models import Request
from shared.db.outbox import OutboxRelay
from shared.events import BadEvent, Event, parse_event
from shared.routes import declare_all
from shared.settings import Settings

log = logs.get_logger()
# The database is down or restarting: the same transaction will work once it is back.
TRANSIENT_DATABASE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError)


class Retry(Exception):
    """Raised by `process` for a transient failure: the message goes back on the queue."""


@dataclass
class Periodic:
    """A job run every `interval` seconds on its own thread until the daemon stops."""

    name: str
    interval: float
    run: Callable[[], object]
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self, stopping: threading.Event) -> None:
        def loop() -> None:
            while not stopping.is_set():
                try:
                    self.run()
                except Exception as exc:  # the database may be down for a while; keep sweeping
                    log.error(f"{self.name}.failed", error=str(exc), exc_info=True)
                stopping.wait(self.interval)

        self._thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


@dataclass
class Runtime:
    name: str
    settings: Settings
    factory: sessionmaker[Session]
    publisher: Publisher
    relay: OutboxRelay
    clock: Clock = field(default_factory=SystemClock)
    stopping: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def create(cls, name: str, settings: Settings) -> Runtime:
        factory = session_factory(make_engine(settings.database_url))
        publisher = Publisher(settings)
        relay = OutboxRelay(factory, publisher, poll_seconds=settings.outbox_poll_seconds)
        return cls(name=name, settings=settings, factory=factory, publisher=publisher, relay=relay)

    def handler(self, routing_keys: Sequence[str], process: Callable[[Event], None]) -> Callable[[Delivery], Outcome]:
        """Decode, validate and process one delivery; the outcome decides ack, dead-letter or requeue."""
        expected = tuple(routing_keys)

        def handle(delivery: Delivery) -> Outcome:
            try:
                event = parse_event(delivery.body, max_bytes=self.settings.max_event_bytes, expected_types=expected)
            except BadEvent as exc:
                log.warning("event.rejected", reason=str(exc), message_id=delivery.message_id,
                            routing_key=delivery.routing_key)
                return Outcome.REJECT
            allowed = self.settings.allowed_publishers(event.type)
            if allowed is not None and delivery.user_id not in allowed:
                log.warning("event.rejected", event_id=event.id, event_type=event.type, publisher=delivery.user_id,
                            reason=f"{event.type} published by broker user {delivery.user_id!r}, "
                                   f"not one of JIT_DECISION_PUBLISHERS")
                return Outcome.REJECT
            data = event.data
            with logs.bound(event_id=event.id, event_type=event.type, request_id=getattr(data, "request_id", None),
                            checkout_id=getattr(data, "checkout_id", None), host=getattr(data, "host", None)):
                try:
                    return self._process_with_backoff(process, event)
                finally:
                    self.relay.wake()

        return handle

    def _process_with_backoff(self, process: Callable[[Event], None], event: Event) -> Outcome:
        """Run `process`; while the database is unreachable, retry here with backoff instead of requeueing
        at once, which would burn the queue's delivery limit in seconds and dead-letter a check-in."""
        failures = 0
        while True:
            try:
                process(event)
                return Outcome.ACK
            except Retry as exc:
                log.warning("event.requeued", reason=str(exc))
                return Outcome.REQUEUE
            except TRANSIENT_DATABASE_ERRORS as exc:
                delay = backoff_delay(failures)
                failures += 1
                log.warning("event.retrying", reason="database unavailable", error=str(exc).splitlines()[0][:300],
                            failures=failures, retry_in_seconds=round(delay, 2))
                if self.stopping.wait(delay):
                    return Outcome.REQUEUE  # stopping: the broker redelivers it (one delivery used)

    def _declare_topology(self, attempts: int = 30) -> None:
        """Declare every queue before the relay publishes; wait for a broker that is still starting."""
        for attempt in range(1, attempts + 1):
            try:
                declare_all(self.settings)
                return
            except CONNECTION_ERRORS as exc:
                log.warning("amqp.topology.failed", attempt=attempt, error=repr(exc))
                time.sleep(backoff_delay(attempt - 1))
        raise SystemExit(f"jit-{self.name}: RabbitMQ not reachable at {logs.hide_password(self.settings.amqp_url)}")

    @contextmanager
    def started(self, routing_keys: Sequence[str], process: Callable[[Event], None],
                periodic: Sequence[Periodic] = ()) -> Iterator[Consumer]:
        """Topology, outbox relay and periodic jobs running; yields the consumer, not yet running.

        `serve` runs it on the main thread; tests run it on a thread of theirs. On exit everything
        stops: the contract's 30 s are mostly the consumer's drain, so the jobs get 2 s.
        """
        consumer = Consumer(self.settings, self.name, routing_keys, self.handler(routing_keys, process),
                            stopping=self.stopping)
        self._declare_topology()
        self.relay.start()
        watch = DeadLetterWatch(self.settings, self.name)
        periodic = [*periodic, Periodic("deadletters", self.settings.dead_letter_check_seconds, watch)]
        for job in periodic:
            job.start(self.stopping)
        log.info("daemon.started", daemon=self.name, queue=self.settings.queue(self.name),
                 routing_keys=list(routing_keys))
        try:
            yield consumer
        finally:
            self.stopping.set()
            for job in periodic:
                job.join(2.0)
            self.relay.stop()
            self.publisher.close()
            bind = self.factory.kw.get("bind")
            if bind is not None:
                bind.dispose()
            log.info("daemon.stopped", daemon=self.name)

    def serve(self, routing_keys: Sequence[str], process: Callable[[Event], None],
              periodic: Sequence[Periodic] = ()) -> int:
        """Run until SIGTERM/SIGINT: stop taking messages, finish what is in flight, exit 0."""
        with self.started(routing_keys, process, periodic) as consumer:
            consumer.install_signal_handlers()
            consumer.run()
        return 0


def check(runtime: Runtime) -> int:
    """Readiness: the database answers with our schema and the broker accepts a connection."""
    try:
        with runtime.factory() as session:
            session.execute(select(func.count()).select_from(Request))
    except Exception as exc:
        print(f"jit-{runtime.name}: database not ready ({type(exc).__name__}); has `jitctl db upgrade` run?",
              file=sys.stderr)
        return 1
    try:
        close_quietly(connect(runtime.settings.amqp_url, name=f"jit-{runtime.name} check"))
    except CONNECTION_ERRORS as exc:
        print(f"jit-{runtime.name}: RabbitMQ not reachable at {logs.hide_password(runtime.settings.amqp_url)}: "
              f"{exc!r}", file=sys.stderr)
        return 1
    finally:
        runtime.publisher.close()
    print(f"jit-{runtime.name}: database and broker reachable")
    return 0


def daemon_main(name: str, description: str, build: Callable[[Runtime], int]) -> None:
    """Parse the (few) flags, configure logging from the environment, build and serve the daemon."""
    parser = argparse.ArgumentParser(prog=f"jit-{name}", description=description,
                                     epilog="Configuration comes from JIT_* environment variables (README).")
    parser.add_argument("--check", action="store_true", help="connect to the database and broker, then exit")
    args = parser.parse_args()
    try:
        settings = Settings()
    except Exception as exc:
        print(f"jit-{name}: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.configure(settings.log_level, settings.log_format)
    runtime = Runtime.create(name, settings)
    if args.check:
        raise SystemExit(check(runtime))
    raise SystemExit(build(runtime))
