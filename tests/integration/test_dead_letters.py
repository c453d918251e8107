"""Poison messages and dead letters, through jit-approval running with the real Consumer on the real broker.

Bad bodies (not JSON, a wrong schema, too big, nested too deep) with good events queued behind each:
every bad one is refused with a logged reason and dead-lettered at once (Outcome.REJECT; the tests'
classic queues have no delivery limit, the quorum limit is tested in test_amqp_consumer.py), and every
good one behind is still processed. A valid event for a request nobody knows is refused with a reason
and acked (a redelivery could never help). A transient database failure is retried in place with
backoff and neither requeued nor dead-lettered. `jitctl dead-letters list` takes nothing away, and
`jitctl dead-letters replay` re-publishes, with one effect per event thanks to the daemons' inbox.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from jitctl.main import main
from services.approval.main import NAME, ROUTING_KEYS, processor
from shared.amqp.publisher import Publisher
from shared.amqp.topology import dead_letter_queue
from shared.daemon import Runtime
from shared.db.models import AuditEntry, InboxEvent, Request
from shared.events import Event, new_event
from shared.routes import declare_all
from shared.settings import Settings
from tests.conftest import settings_env
from tests.factories import HostSpec, seed_config
from tests.integration.approval_harness import approval_running, poll, requested
from tests.reliability_record import Record, database_kind
from tests.support import running

pytestmark = [pytest.mark.rabbitmq]
COMMAND = ".venv/bin/pytest -p no:cacheprovider tests/integration/test_dead_letters.py"


def depth(settings: Settings, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def dead(settings: Settings) -> int:
    return depth(settings, dead_letter_queue(settings, NAME))


def jitctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, _ = capsys.readouterr()
    return int(exited.value.code or 0), json.loads(out)


def pending(factory: sessionmaker[Session], request_ids: list[str]) -> bool:
    with factory() as s:
        states = {r.id: r.state for r in s.scalars(select(Request).where(Request.id.in_(request_ids)))}
    return all(states.get(rid) == "PENDING" for rid in request_ids)


@pytest.fixture
def seeded(settings: Settings, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> Settings:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    declare_all(settings)
    return settings


def bad_bodies(settings: Settings) -> dict[str, tuple[bytes, str]]:
    """name -> (body, what the logged reason says)."""
    good = json.loads(requested().to_json())
    wrong_schema = {**good, "data": {k: v for k, v in good["data"].items() if k != "request_id"}}
    huge = {**good, "data": {**good["data"], "justification": "x" * (settings.max_event_bytes + 10)}}
    return {
        "not-json": (b"\xff\xfe this is {not JSON", "not JSON"),
        "wrong-schema": (json.dumps(wrong_schema).encode(), "request_id"),
        "huge": (json.dumps(huge).encode(), "oversized body"),
        "deep-object": (('{"a":' * 3000 + "1" + "}" * 3000).encode(), "nested deeper"),
        "deep-array": (b"[" * 30000 + b"]" * 30000, "nested deeper"),
    }


def test_poison_is_dead_lettered_at_once_with_a_reason_and_the_queue_behind_keeps_flowing(
        seeded: Settings, factory: sessionmaker[Session], capsys: pytest.CaptureFixture[str]) -> None:
    settings = seeded
    bad = bad_bodies(settings)
    unknown = new_event("elevation.extend_requested", {
        "request_id": "req-nobody-knows", "extension_id": "ext-1", "requester_id": "alice",
        "justification": "more time", "duration_seconds": 600}, source="test")
    goods: list[str] = []
    with Publisher(settings) as publisher:  # all queued before the daemon starts: the good ones wait behind
        for name, (body, _) in bad.items():
            publisher.publish("elevation.requested", body, message_id=f"bad-{name}")
            event = requested()
            goods.append(event.data.request_id)
            publisher.publish(event.type, event.to_json(), message_id=event.id)
        publisher.publish(unknown.type, unknown.to_json(), message_id=unknown.id)
        event = requested()
        goods.append(event.data.request_id)
        publisher.publish(event.type, event.to_json(), message_id=event.id)

    with capture_logs() as logs, approval_running(settings):
        poll(lambda: pending(factory, goods), 20, "every good event behind the bad ones processed")
        poll(lambda: dead(settings) == len(bad), 10, f"{len(bad)} dead letters")
        poll(lambda: any(e["event"] == "elevation.extension_denied" for e in logs), 10, "the unknown request refused")

    # The consumer refuses an oversized body before a worker sees it (logged with `event_id`), the handler the rest.
    rejected = {e.get("message_id") or e.get("event_id"): e["reason"] for e in logs if e["event"] == "event.rejected"}
    for name, (_, why) in bad.items():
        assert why in rejected[f"bad-{name}"], (name, rejected.get(f"bad-{name}"))
    denied = [e for e in logs if e["event"] == "elevation.extension_denied"]
    assert len(denied) == 1 and "req-nobody-knows is unknown" in denied[0]["reason"]
    assert unknown.id not in rejected and dead(settings) == len(bad)  # refused, but acked: not dead

    # `list` shows them and takes nothing away: a second run sees the same, in the same order.
    seen = []
    for _ in range(2):
        code, rows = jitctl(capsys, "dead-letters", "list", "--daemon", NAME, "--json")
        assert code == 0 and sorted(r["message_id"] for r in rows) == sorted(f"bad-{n}" for n in bad)
        assert dead(settings) == len(bad)
        seen.append(rows)
    assert seen[0] == seen[1]
    by_id = {r["message_id"]: r for r in rows}
    assert all(r["routing_key"] == "elevation.requested" and r["reason"] == "rejected" for r in rows)
    assert by_id["bad-not-json"]["body"].startswith("\\xff\\xfe this is {not JSON")
    assert by_id["bad-huge"]["size"] == len(bad["huge"][0]) and by_id["bad-huge"]["body"].endswith("...")
    assert len(by_id["bad-deep-array"]["body"]) <= 130

    # Replaying poison is safe: each is re-published once, refused again, and back in the dead-letter queue.
    with approval_running(settings):
        code, rows = jitctl(capsys, "dead-letters", "replay", "--daemon", NAME, "--json")
        assert code == 0 and [r["result"] for r in rows] == ["replayed"] * len(bad)
        poll(lambda: dead(settings) == len(bad) and depth(settings, settings.queue(NAME)) == 0, 10,
             "the poison back in the dead-letter queue")
    with factory() as s:
        assert s.scalar(select(Request).where(Request.id.notin_(goods))) is None
    record = Record("dead-letters", f"poison-{database_kind(settings.database_url)}", command=COMMAND)
    for name, (_, why) in bad.items():
        record.tried(f"poison body: {name}", kind="bad input", outcome=f"refused ({why}), dead-lettered at once, "
                     "the good event behind processed; replayed: refused again")
    record.tried("valid event for an unknown request", kind="bad input", outcome="refused with a reason, acked")
    record.checked("the queue behind keeps flowing", ok=True, detail=f"{len(goods)} good events processed")
    record.write()


def _dead_letter(settings: Settings, event: Event) -> None:
    """What the consumer does to a message it refuses: nack without requeue, on the real queue (x-death set)."""
    with Publisher(settings) as publisher:
        publisher.publish(event.type, event.to_json(), message_id=event.id)
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        method, _, _ = channel.basic_get(settings.queue(NAME), auto_ack=False)
        assert method is not None
        channel.basic_nack(method.delivery_tag, requeue=False)
    finally:
        connection.close()


def test_replay_is_idempotent_an_event_already_processed_has_one_effect(
        seeded: Settings, factory: sessionmaker[Session], capsys: pytest.CaptureFixture[str]) -> None:
    settings = seeded
    done, fresh = requested(), requested()
    _dead_letter(settings, done)   # a copy of an event the daemon will also get and apply
    _dead_letter(settings, fresh)  # an event only the dead-letter queue holds
    assert dead(settings) == 2
    code, rows = jitctl(capsys, "dead-letters", "list", "--json")
    assert code == 0 and [r["message_id"] for r in rows] == [done.id, fresh.id]
    assert {(r["daemon"], r["routing_key"], r["reason"]) for r in rows} == {(NAME, "elevation.requested", "rejected")}

    runtime = Runtime.create(NAME, settings)
    real = processor(runtime.factory, runtime.clock)
    handled: list[str] = []

    def process(event: Event) -> None:  # the daemon's own processor, counting what reaches it
        real(event)
        handled.append(event.id)

    with runtime.started(ROUTING_KEYS, process) as consumer, running(consumer, join_timeout=20):
        runtime.publisher.publish(done.type, done.to_json(), message_id=done.id)
        poll(lambda: pending(factory, [done.data.request_id]), 10, "the event applied once")
        code, rows = jitctl(capsys, "dead-letters", "replay", "--json")
        assert code == 0 and [(r["message_id"], r["result"]) for r in rows] == [(done.id, "replayed"),
                                                                                 (fresh.id, "replayed")]
        poll(lambda: handled.count(done.id) == 2 and fresh.id in handled, 10, "both replayed events handled")
    assert dead(settings) == 0
    with factory() as s:
        for event in (done, fresh):
            rows_ = s.scalars(select(AuditEntry).where(AuditEntry.request_id == event.data.request_id)).all()
            assert len([a for a in rows_ if a.event_id == event.id]) == 1, [(a.action, a.event_id) for a in rows_]
            assert s.scalar(select(InboxEvent).where(InboxEvent.event_id == event.id)) is not None
    record = Record("dead-letters", f"replay-{database_kind(settings.database_url)}", command=COMMAND)
    record.tried("dead letter replayed (one already applied, one not)", kind="fault", count=2,
                 outcome="one effect per event (inbox)")
    record.write()


@pytest.fixture
def flaky_approval(seeded: Settings) -> Iterator[tuple[Runtime, list[str]]]:
    """jit-approval built as its main builds it, with a database that fails the first two times."""
    runtime = Runtime.create(NAME, seeded)
    real = processor(runtime.factory, runtime.clock)
    calls: list[str] = []

    def process(event: Event) -> None:
        calls.append(event.id)
        if len(calls) <= 2:
            raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("database restarting"))
        real(event)

    with runtime.started(ROUTING_KEYS, process) as consumer, running(consumer, join_timeout=20):
        yield runtime, calls


def test_a_transient_database_failure_is_retried_with_backoff_and_not_dead_lettered(
        flaky_approval: tuple[Runtime, list[str]], factory: sessionmaker[Session]) -> None:
    runtime, calls = flaky_approval
    event = requested()
    retry_check: Callable[[], bool] = lambda: pending(factory, [event.data.request_id])  # noqa: E731
    with capture_logs() as logs:
        runtime.publisher.publish(event.type, event.to_json(), message_id=event.id)
        poll(retry_check, 15, "the event applied once the database is back")
    retrying = [e for e in logs if e["event"] == "event.retrying"]
    assert [e["failures"] for e in retrying] == [1, 2] and all(e["retry_in_seconds"] > 0 for e in retrying)
    assert calls == [event.id] * 3  # retried in place: never requeued (that would be a 4th call)
    assert not [e for e in logs if e["event"] in ("event.requeued", "event.rejected")]
    assert dead(runtime.settings) == 0 and depth(runtime.settings, runtime.settings.queue(NAME)) == 0
    record = Record("dead-letters", f"transient-{database_kind(runtime.settings.database_url)}", command=COMMAND)
    record.tried("database failure while processing (OperationalError)", kind="fault", count=2,
                 outcome="retried in place with backoff; not requeued, not dead-lettered")
    record.write()
