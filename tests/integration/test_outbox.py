"""The outbox relay through the real broker: what commits is published once, in order; what rolls back never is."""

from __future__ import annotations

import json
import time

import pika
import pytest
from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.amqp.publisher import Publisher
from shared.db.engine import transaction
from shared.db.models import OutboxEvent
from shared.db.outbox import OutboxRelay, enqueue, publish_pending
from shared.events import new_event
from shared.routes import declare_all, journal_queue
from shared.settings import Settings


def failed_event(n: int):  # type: ignore[no-untyped-def]
    return new_event("elevation.failed", {"request_id": f"req-{n}", "error": "boom"}, source="test")


def drain(settings: Settings, expect: int, timeout: float = 10.0) -> list[pika.spec.BasicProperties | bytes]:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = conn.channel()
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        method, props, body = channel.basic_get(journal_queue(settings), auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        got.append((props, body))
    conn.close()
    return got


def test_committed_events_are_published_in_order_and_marked(settings: Settings,
                                                            factory: sessionmaker[Session]) -> None:
    declare_all(settings)
    events = [failed_event(n) for n in range(5)]
    with transaction(factory) as s:
        for e in events:
            enqueue(s, e)
    with pytest.raises(RuntimeError), transaction(factory) as s:
        enqueue(s, failed_event(99))
        raise RuntimeError("rolled back")
    with Publisher(settings) as publisher:
        relay = OutboxRelay(factory, publisher, poll_seconds=0.05).start()
        got = drain(settings, expect=5)
        relay.stop()
    assert [json.loads(body)["id"] for _, body in got] == [e.id for e in events]
    props = got[0][0]
    assert props.delivery_mode == 2 and props.content_type == "application/cloudevents+json"
    assert props.message_id == events[0].id
    with factory() as s:
        rows = s.scalars(select(OutboxEvent)).all()
        assert len(rows) == 5 and all(r.published_at is not None for r in rows)
    assert drain(settings, expect=1, timeout=0.5) == [], "published more than once, or the rolled-back one"


def test_an_unroutable_event_stays_unpublished_with_its_error(settings: Settings,
                                                              factory: sessionmaker[Session]) -> None:
    # No daemon has declared anything: nothing is bound, so the broker returns the message.
    with transaction(factory) as s:
        enqueue(s, failed_event(1))
    with Publisher(settings) as publisher:
        assert publish_pending(factory, publisher) == 0
    with factory() as s:
        row = s.scalars(select(OutboxEvent)).one()
        assert row.published_at is None and row.attempts == 1
        assert "unroutable" in (row.last_error or "")
    declare_all(settings)
    with Publisher(settings) as publisher:
        assert publish_pending(factory, publisher) == 1


class WritingPublisher:
    """Writes to the database while it 'publishes', as another daemon's transaction would meanwhile."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory
        self.sent: list[str] = []

    def publish(self, routing_key: str, body: bytes, *, message_id: str) -> None:
        with transaction(self.factory) as s:  # would wait for the lock if the relay still held it
            enqueue(s, failed_event(1000 + len(self.sent)))
        self.sent.append(message_id)


def test_no_writer_waits_on_the_relay_while_it_publishes(factory: sessionmaker[Session]) -> None:
    # On SQLite a transaction is the whole database's write lock: holding it across broker I/O would
    # stall every daemon's writes for as long as the broker is slow (so no transaction is open then). On
    # PostgreSQL the relay's transaction locks only the rows it publishes.
    with transaction(factory) as s:
        enqueue(s, failed_event(1))
    publisher = WritingPublisher(factory)
    started = time.monotonic()
    assert publish_pending(factory, publisher) == 1
    assert time.monotonic() - started < 5, "the publish waited on a lock the relay held"


def test_a_claimed_row_is_left_to_the_relay_that_claimed_it(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        enqueue(s, failed_event(1))
    sent: list[str] = []

    class Second:
        def publish(self, routing_key: str, body: bytes, *, message_id: str) -> None:
            sent.append(message_id)

    class First:
        def publish(self, routing_key: str, body: bytes, *, message_id: str) -> None:
            # While the first relay publishes, a second relay runs: it must find nothing to publish.
            assert publish_pending(factory, Second()) == 0
            sent.append(message_id)

    assert publish_pending(factory, First()) == 1
    assert len(sent) == 1


def test_the_journal_keeps_every_event_type_and_no_status_query(settings: Settings) -> None:
    """A `status.query` is a request, not an event: it must not push real events out of the bounded journal."""
    from shared.events import EVENT_TYPES

    declare_all(settings)
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = conn.channel()
    channel.queue_bind(journal_queue(settings), settings.exchange, routing_key="#")  # as versions before did
    declare_all(settings)  # a daemon of this version starts: the catch-all binding goes
    channel.basic_publish(settings.exchange, "status.query", b'{"secret_id": "s", "user_id": "u"}')
    for event_type in EVENT_TYPES:
        channel.basic_publish(settings.exchange, event_type, event_type.encode())
    conn.close()
    got = drain(settings, expect=len(EVENT_TYPES) + 1, timeout=3.0)
    assert sorted(body for _, body in got) == sorted(t.encode() for t in EVENT_TYPES)  # type: ignore[misc]


class Dying:
    """A relay's process dies in the middle of publishing (not an error the relay handles)."""

    def publish(self, routing_key: str, body: bytes, *, message_id: str) -> None:
        raise KeyboardInterrupt


def test_rows_of_a_relay_that_died_mid_publish_are_published_by_the_next(database_url: str,
                                                                         factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        enqueue(s, failed_event(1))
    with pytest.raises(KeyboardInterrupt):
        publish_pending(factory, Dying())
    sent: list[str] = []

    class Next:
        def publish(self, routing_key: str, body: bytes, *, message_id: str) -> None:
            sent.append(message_id)

    if database_url.startswith("sqlite"):
        # Claimed in a transaction of its own, which committed: the claim runs out before anyone retakes it.
        assert publish_pending(factory, Next()) == 0
        with transaction(factory) as s:
            s.execute(update(OutboxEvent).values(claimed_until=None))
    # PostgreSQL: the dead relay's transaction rolled back and its row locks went with it, so at once.
    assert publish_pending(factory, Next()) == 1
    assert len(sent) == 1


# SQLite claims, publishes and marks in two transactions (its write lock must not span broker I/O).
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_on_postgresql_a_batch_is_published_in_one_transaction(engine: Engine,
                                                               factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        for n in range(3):
            enqueue(s, failed_event(n))
    commits: list[object] = []

    def committed(conn: object) -> None:
        commits.append(conn)

    sent: list[str] = []

    class Recording:
        def publish(self, routing_key: str, body: bytes, *, message_id: str) -> None:
            sent.append(message_id)

    event.listen(engine, "commit", committed)
    try:
        assert publish_pending(factory, Recording()) == 3
    finally:
        event.remove(engine, "commit", committed)
    assert len(sent) == 3 and len(commits) == 1
    with factory() as s:
        assert all(r.published_at is not None for r in s.scalars(select(OutboxEvent)))
