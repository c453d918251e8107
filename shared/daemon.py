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
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import cli, health, logs, metrics, trust
from shared.amqp.connection import CONNECTION_ERRORS, backoff_delay, close_quietly, connect
from shared.amqp.consumer import Consumer, Delivery, Outcome
from shared.amqp.deadletters import DeadLetterWatch
from shared.amqp.publisher import Publisher
from shared.clock import Clock, SystemClock
from shared.db import audit
from shared.db.engine import TRANSIENT_DATABASE_ERRORS, make_engine, session_factory, transaction
from shared.db.models import User
from shared.db.outbox import OutboxRelay
from shared.events import BadEvent, Event, parse_event
from shared.probes import ProbeServer
from shared.routes import declare_all
from shared.settings import Settings, SettingsError, missing_sqlite_file
from shared.version import VERSION

log = logs.get_logger()


DATABASE_GAUGES_SECONDS = 5.0
_OUTCOME_LABELS = {Outcome.ACK: "ack", Outcome.REJECT: "dead_lettered", Outcome.REQUEUE: "requeued"}


class Retry(Exception):
    """Raised by `process` for a transient failure: the message goes back on the queue."""


@dataclass
class Periodic:
    """A job run every `interval` seconds on its own thread until the daemon stops."""

    name: str
    interval: float
    run: Callable[[], object]
    _thread: threading.Thread | None = field(default=None, repr=False)
    heartbeat: health.Heartbeat | None = field(default=None, repr=False)

    def start(self, stopping: threading.Event, liveness: health.Liveness | None = None) -> None:
        beat = (liveness or health.Liveness()).heartbeat(self.name, health.DEFAULT_STALE_SECONDS + self.interval)
        self.heartbeat = beat

        def loop() -> None:
            health.own(beat)
            while not stopping.is_set():
                beat.beat()
                try:
                    self.run()
                except Exception as exc:  # the database may be down for a while; keep sweeping
                    log.error(f"{self.name}.failed", error=str(exc), exc_info=True)
                beat.beat()
                stopping.wait(self.interval)
            beat.stopped = True

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
    liveness: health.Liveness = field(default_factory=health.Liveness)
    probes: ProbeServer | None = None

    @classmethod
    def create(cls, name: str, settings: Settings) -> Runtime:
        factory = session_factory(make_engine(settings.database_url, application_name=f"jit-{name}"))
        publisher = Publisher(settings)
        relay = OutboxRelay(factory, publisher, poll_seconds=settings.outbox_poll_seconds,
                            types=trust.publishable(settings))
        return cls(name=name, settings=settings, factory=factory, publisher=publisher, relay=relay)

    def handler(self, routing_keys: Sequence[str], process: Callable[[Event], None]) -> Callable[[Delivery], Outcome]:
        """Decode, validate and process one delivery; the outcome decides ack, dead-letter or requeue."""
        expected = tuple(routing_keys)

        def handle(delivery: Delivery) -> Outcome:
            # Label by routing key only when it is one we consume: a label set must stay bounded.
            event_type = delivery.routing_key if delivery.routing_key in expected else "other"
            started = time.monotonic()
            outcome: Outcome | None = None
            try:
                outcome = decide(delivery)
                return outcome
            finally:
                label = _OUTCOME_LABELS[outcome] if outcome is not None else "crashed"
                metrics.EVENTS_CONSUMED.labels(type=event_type, outcome=label).inc()
                metrics.EVENT_HANDLING.labels(type=event_type).observe(time.monotonic() - started)

        def decide(delivery: Delivery) -> Outcome:
            try:
                event = parse_event(delivery.body, max_bytes=self.settings.max_event_bytes, expected_types=expected)
            except BadEvent as exc:
                log.warning("event.rejected", reason=str(exc), message_id=delivery.message_id,
                            routing_key=delivery.routing_key)
                return Outcome.REJECT
            event = event.model_copy(update={"publisher": delivery.user_id})
            refused = self._publisher_refusal(event)
            if refused is not None:
                return refused
            data = event.data
            with logs.bound(event_id=event.id, event_type=event.type, request_id=getattr(data, "request_id", None),
                            checkout_id=getattr(data, "checkout_id", None), host=getattr(data, "host", None)):
                try:
                    return self._process_with_backoff(process, event)
                finally:
                    self.relay.wake()

        return handle

    def _publisher_refusal(self, event: Event) -> Outcome | None:
        """None when the event's publisher may publish it (shared/trust.py); else audit, log and dead-letter it."""
        field = trust.PERSON_FIELDS.get(event.type)
        person = getattr(event.data, field) if field else None
        reason = trust.refusal(event.type, event.publisher, self.settings.allowed_publishers(event.type), person,
                               lambda who: self._broker_user_of(who))
        if reason is None:
            return None
        data = event.data
        log.warning("event.rejected", event_id=event.id, event_type=event.type, publisher=event.publisher,
                    request_id=getattr(data, "request_id", None), reason=reason)

        def audit_refusal(_: Event) -> None:
            with transaction(self.factory) as session:
                audit.record(session, at=self.clock.now(), action="event.refused", actor=event.publisher or "unknown",
                             request_id=getattr(data, "request_id", None), event_id=event.id, reason=reason,
                             details={"type": event.type, "daemon": self.name,
                                      "data": data.model_dump(mode="json", exclude_none=True)})

        self._process_with_backoff(audit_refusal, event)
        return Outcome.REJECT

    def _broker_user_of(self, person: str) -> str | None:
        with self.factory() as session:
            return session.scalar(select(User.broker_user).where(User.id == person))

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
            except sa_exc.DataError as exc:  # a value the database refuses: every delivery would fail the same way
                log.error("event.rejected", reason=f"the database refused a value: {str(exc).splitlines()[0][:300]}")
                return Outcome.REJECT
            except TRANSIENT_DATABASE_ERRORS as exc:
                delay = backoff_delay(failures)
                failures += 1
                log.warning("event.retrying", reason="database unavailable", error=str(exc).splitlines()[0][:300],
                            failures=failures, retry_in_seconds=round(delay, 2))
                if self.stopping.wait(delay):
                    return Outcome.REQUEUE  # stopping: the broker redelivers it (one delivery used)

    def readiness(self, consumer: Consumer | None) -> list[health.Check]:
        """What `/readyz` answers (with the running consumer) and `--check` exits on (consumer None)."""

        def broker() -> health.Check:
            if consumer is not None:
                if not consumer.connected:
                    return health.Check("broker", False, "the consumer is not connected to RabbitMQ")
                if not consumer.ready.is_set():
                    return health.Check("broker", False, f"connected, consumer not attached to "
                                                         f"{self.settings.queue(self.name)}")
                return health.Check("broker", True, f"connected, consuming {self.settings.queue(self.name)}")
            try:
                close_quietly(connect(self.settings.amqp_url, name=f"jit-{self.name} check"))
            except CONNECTION_ERRORS as exc:
                return health.Check("broker", False, f"RabbitMQ not reachable at "
                                                     f"{logs.hide_password(self.settings.amqp_url)}: {exc!r}")
            return health.Check("broker", True, "RabbitMQ reachable")

        return health.readiness(self.name, self.factory, self.settings.database_url, broker)

    def _start_probes(self, consumer: Consumer) -> list[Periodic]:
        """With `metrics_port` set: serve /metrics, /healthz, /readyz, and keep the database gauges fresh."""
        port = self.settings.metrics_port
        if port is None:
            return []
        self.probes = ProbeServer("", port, self.liveness.checks, lambda: self.readiness(consumer)).start()
        gauges = metrics.DatabaseGauges(self.factory, self.clock)
        return [Periodic("metrics.database", DATABASE_GAUGES_SECONDS, gauges)]

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
                            stopping=self.stopping, heartbeat=self.liveness.heartbeat("consumer"))
        probes = self._start_probes(consumer)
        self._declare_topology()
        self.relay.start()
        watch = DeadLetterWatch(self.settings, self.name)
        periodic = [*periodic, *probes, Periodic("deadletters", self.settings.dead_letter_check_seconds, watch)]
        for job in periodic:
            job.start(self.stopping, self.liveness)
        log.info("daemon.started", daemon=self.name, queue=self.settings.queue(self.name),
                 routing_keys=list(routing_keys))
        try:
            yield consumer
        finally:
            self.stopping.set()
            for job in periodic:
                job.join(2.0)
            self.relay.stop()
            if self.probes is not None:
                self.probes.stop()
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
    """Readiness, as `/readyz` sees it: schema at head, credential sources readable, broker reachable."""
    try:
        checks = runtime.readiness(consumer=None)
    finally:
        runtime.publisher.close()
    ok = all(c.ok for c in checks)
    print(f"jit-{runtime.name}: " + health.report(checks).rstrip().replace("\n", f"\njit-{runtime.name}: "),
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def daemon_main(name: str, description: str, build: Callable[[Runtime], int]) -> None:
    """Parse the (few) flags, configure logging from the environment, build and serve the daemon.

    Every log line carries `daemon` and `version`; a bad flag or JIT_* variable is one line on stderr
    naming it, exit 2; exit codes are listed in `--help`.
    """
    parser = cli.OneLineParser(prog=f"jit-{name}", description=description,
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="Configuration comes from JIT_* environment variables (README).\n\n"
                                      "exit codes:\n  0    stopped cleanly (SIGTERM), or --check: ready\n"
                                      "  1    --check: not ready; or the broker or database never answered\n"
                                      "  2    a bad option or JIT_* variable (named)")
    cli.add_version(parser)
    parser.add_argument("--check", action="store_true", help="check readiness (database schema, credential "
                        "sources, broker), print it, and exit 0 if ready, 1 if not")
    args = parser.parse_args()
    try:
        settings = Settings.from_environment()
    except SettingsError as exc:
        cli.fail(f"jit-{name}", f"invalid environment: {exc}", cli.USAGE)
    missing = missing_sqlite_file(settings.database_url) if args.check else None
    if missing is not None:  # a probe must not create an empty database at a mistyped path
        cli.fail(f"jit-{name}", f"no database at {missing}: check JIT_DATABASE_URL, or run `jitctl db upgrade`")
    if settings.publishers is None and not settings.allow_any_publisher:
        cli.fail(f"jit-{name}", "no publisher mapping: set JIT_PUBLISHERS (`shipped` for the users of "
                 "deploy/rabbitmq/definitions.json; docs/security.md), or JIT_ALLOW_ANY_PUBLISHER=true for "
                 "development only", cli.USAGE)
    logs.configure(settings.log_level, settings.log_format, daemon=name, version=VERSION)
    if settings.allow_any_publisher:
        log.warning("trust.disabled", reason="JIT_ALLOW_ANY_PUBLISHER=true: events are accepted from any broker "
                                             "user, and anyone can decide as anyone (development only)")
    for warning in trust.plaintext_warnings(settings.amqp_url, settings.database_url):
        log.warning("transport.plaintext", reason=warning)
    runtime = Runtime.create(name, settings)
    if args.check:
        raise SystemExit(check(runtime))
    raise SystemExit(build(runtime))
