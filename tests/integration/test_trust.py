"""Trust boundaries over the real broker, in a vhost built from the shipped definitions with distinct
broker users, on both databases (issue 11).

The broker refuses every publish a user's topic permissions do not allow (ACCESS_REFUSED closes the
channel); the daemons refuse, audit (`event.refused`) and dead-letter every event whose publisher their
mapping does not allow, and every decision, revoke or extension that names a person its publisher is
not (`users[].broker_user`); `jitctl --as` must be the authenticated user.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared import trust
from shared.daemon import Runtime
from shared.db.engine import transaction
from shared.db.models import AuditEntry, Request, User
from shared.events import Event, format_time, new_event
from shared.routes import ROUTES
from tests.conftest import settings_env
from tests.factories import HostSpec, seed_config
from tests.integration.approval_harness import approval_running, decided, poll, requested
from tests.integration.shipped_broker import ShippedBroker, new_id, purge, shipped  # noqa: F401 - fixture
from tests.support import running

pytestmark = [pytest.mark.rabbitmq]
REFUSED = 403


def publish_as(broker: ShippedBroker, who: str, routing_key: str, body: bytes, message_id: str = "m") -> None:
    """Publish as upstream does (no declarations: the components may not configure anything)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker.url(who)))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        user = "guest" if who == "guest" else broker.user(who)
        channel.basic_publish("jit.events", routing_key, body, pika.BasicProperties(
            delivery_mode=2, content_type="application/cloudevents+json", message_id=message_id, user_id=user))
    finally:
        if connection.is_open:
            connection.close()


def send(broker: ShippedBroker, who: str, event: Event) -> None:
    publish_as(broker, who, event.type, event.to_json(), event.id)


def test_the_broker_refuses_every_routing_key_a_user_may_not_write(shipped: ShippedBroker) -> None:  # noqa: F811
    purge(shipped)
    users = [*trust.SHIPPED_USERS, "bob-cli"]
    for user in users:
        writes = {t for t, who in trust.SHIPPED.items() if user in who}
        if user in (trust.JITCTL, "bob-cli"):
            writes |= set(trust.PERSON_FIELDS)
        for event_type in trust.KNOWN_TYPES:
            if event_type in writes:
                publish_as(shipped, user, event_type, b"{}")
                continue
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
                publish_as(shipped, user, event_type, b"{}")
            assert refused.value.reply_code == REFUSED, (user, event_type)
            assert "ACCESS_REFUSED" in refused.value.reply_text and event_type in refused.value.reply_text
    purge(shipped)


@pytest.fixture
def world(shipped: ShippedBroker, database_url: str, factory: sessionmaker[Session]) -> ShippedBroker:  # noqa: F811
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    with transaction(factory) as s:
        s.execute(update(User).where(User.id == "bob").values(broker_user=shipped.user("bob-cli")))
        s.execute(update(User).where(User.id == "carol").values(broker_user=shipped.user("carol-cli")))
    purge(shipped)
    return shipped


def state(factory: sessionmaker[Session], request_id: str) -> str | None:
    with factory() as s:
        row = s.get(Request, request_id)
        return row.state if row else None


def refusals(factory: sessionmaker[Session], event_id: str) -> list[AuditEntry]:
    with factory() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == "event.refused",
                                                       AuditEntry.event_id == event_id)))


def dead_letters(broker: ShippedBroker, daemon: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(broker.url("guest")))
    try:
        return int(connection.channel().queue_declare(f"jit.{daemon}.dead", passive=True).method.message_count)
    finally:
        connection.close()


def refused(factory: sessionmaker[Session], event: Event, why: str) -> AuditEntry:
    entry = poll(lambda: refusals(factory, event.id), 15, f"event.refused for {event.type} {event.id}")[0]
    assert why in (entry.reason or ""), entry.reason
    return entry


def test_forged_requests_and_decisions_are_refused_genuine_ones_applied(
        world: ShippedBroker, database_url: str, factory: sessionmaker[Session]) -> None:
    with approval_running(world.settings("jit-approval", database_url)):
        forged = requested()  # guest may write any routing key here; jit-approval's mapping does not name it
        send(world, "guest", forged)
        entry = refused(factory, forged, "not one of its publishers")
        assert entry.actor == "guest" and entry.request_id == forged.data.request_id
        assert state(factory, forged.data.request_id) is None
        poll(lambda: dead_letters(world, "approval") == 1, 10, "the forged request dead-lettered")

        genuine = requested()
        rid = genuine.data.request_id
        send(world, "jit-workflow", genuine)
        poll(lambda: state(factory, rid) == "PENDING", 15, "PENDING")

        as_bob_by_jitctl = decided(rid, "bob")  # the shared jitctl user is not bob
        send(world, "jitctl", as_bob_by_jitctl)
        refused(factory, as_bob_by_jitctl, "bob's broker user is")
        as_bob_by_carol = decided(rid, "bob")  # carol's own user, speaking for bob
        send(world, "carol-cli", as_bob_by_carol)
        refused(factory, as_bob_by_carol, "a person may only speak for themselves")
        assert state(factory, rid) == "PENDING"

        send(world, "bob-cli", decided(rid, "bob"))
        poll(lambda: state(factory, rid) == "APPROVED", 15, "APPROVED by bob himself")

        asserted = requested()
        send(world, "jit-workflow", asserted)
        poll(lambda: state(factory, asserted.data.request_id) == "PENDING", 15, "PENDING")
        send(world, "jit-requests-tab", decided(asserted.data.request_id, "carol"))  # trusted to assert approvers
        poll(lambda: state(factory, asserted.data.request_id) == "APPROVED", 15, "APPROVED via the Requests tab")
        assert dead_letters(world, "approval") == 3


@contextmanager
def recording(settings: Any, daemon: str) -> Iterator[list[Event]]:
    """The daemon's Runtime (its publisher check, audit and dead-lettering) with a process that records."""
    seen: list[Event] = []
    lock = threading.Lock()

    def record(event: Event) -> None:
        with lock:
            seen.append(event)

    runtime = Runtime.create(daemon, settings)
    with runtime.started(ROUTES[daemon], record) as consumer, running(consumer, join_timeout=20):
        yield seen


def test_forged_check_ins_expiries_revokes_and_approvals_never_reach_a_handler(
        world: ShippedBroker, database_url: str, factory: sessionmaker[Session]) -> None:
    in_an_hour = format_time(datetime.now(UTC) + timedelta(hours=1))
    checked_in = {"checkout_id": new_id("co"), "secret_id": "sec-0-0", "reason": "service_closed"}
    expired = {"request_id": new_id("req"), "reason": "approval_expired"}
    revoke = {"request_id": new_id("req"), "operator_id": "bob", "reason": "done"}
    approved = {"request_id": new_id("req"), "checkout_id": "co-1", "secret_id": "sec-0-0", "approver_id": "bob",
                "expires_at": in_an_hour}
    cases = [  # (daemon, type, data, publisher, accepted)
        ("reaper", "secret.checked_in", checked_in, "guest", False),
        ("reaper", "secret.checked_in", checked_in, "jit-workflow", True),
        ("reaper", "elevation.expired", expired, "guest", False),
        ("reaper", "elevation.expired", expired, "jit-reaper", True),
        ("reaper", "elevation.revoke_requested", revoke, "jitctl", False),
        ("reaper", "elevation.revoke_requested", revoke, "carol-cli", False),
        ("reaper", "elevation.revoke_requested", revoke, "bob-cli", True),
        ("elevator", "elevation.approved", approved, "guest", False),
        ("elevator", "elevation.approved", approved, "jit-approval", True),
    ]
    for daemon in ("reaper", "elevator"):
        with recording(world.settings(f"jit-{daemon}", database_url), daemon) as seen:
            mine = [c for c in cases if c[0] == daemon]
            events = [(new_event(t, data, source="test"), who, ok) for _, t, data, who, ok in mine]
            for event, who, _ in events:
                send(world, who, event)
            accepted = {e.id for e, _, ok in events if ok}
            poll(lambda: {e.id for e in seen} == accepted, 15,  # noqa: B023 - polled within this iteration
                 f"{daemon}: exactly the genuine events handled")
            for event, who, ok in events:
                if not ok:
                    entry = refused(factory, event, "published by")
                    assert entry.actor == ("guest" if who == "guest" else world.user(who))
            forged = sum(not ok for *_, ok in events)
            poll(lambda: dead_letters(world, daemon) == forged, 10, "dead letters")  # noqa: B023 - this iteration
            assert {e.publisher for e in seen} <= {world.user(w) for *_, w, ok in mine if ok}


def test_jitctl_refuses_to_decide_as_someone_else(world: ShippedBroker, database_url: str,
                                                  factory: sessionmaker[Session]) -> None:
    with approval_running(world.settings("jit-approval", database_url)):
        request = requested()
        rid = request.data.request_id
        send(world, "jit-workflow", request)
        poll(lambda: state(factory, rid) == "PENDING", 15, "PENDING")

        def jitctl(who: str, *args: str) -> subprocess.CompletedProcess[str]:
            env = settings_env(world.settings(who, database_url))
            env.pop("JIT_PUBLISHERS")  # an operator's jitctl is not configured as a trusted component
            return subprocess.run([".venv/bin/jitctl", *args], env=env, capture_output=True, text=True, timeout=60)

        shared_user = jitctl("jitctl", "approve", rid, "--as", "bob")
        assert shared_user.returncode == 2, shared_user.stderr
        assert "--as bob refused" in shared_user.stderr and "bob's broker user is" in shared_user.stderr
        as_other = jitctl("carol-cli", "approve", rid, "--as", "bob")
        assert as_other.returncode == 2 and "speak for themselves" in as_other.stderr
        revoke = jitctl("carol-cli", "revoke", rid, "--as", "bob", "--reason", "x")
        assert revoke.returncode == 2 and "--as bob refused" in revoke.stderr
        assert state(factory, rid) == "PENDING"
        own = jitctl("bob-cli", "approve", rid, "--as", "bob", "--wait", "15")
        assert own.returncode == 0, own.stderr
        assert state(factory, rid) == "APPROVED"
