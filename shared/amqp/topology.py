"""The broker objects one daemon needs: the events exchange, its quorum queue and the dead-letter path.

Every declaration is idempotent, so each daemon replica declares its topology on every (re)connect
and never depends on another process having done it first. Changing an argument of an existing
queue (e.g. the delivery limit) is refused by the broker with PRECONDITION_FAILED: such a change
needs the queue deleted, or a policy, not a redeclare.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.settings import Settings


def dead_letter_exchange(settings: Settings) -> str:
    return f"{settings.exchange}.dlx"


def dead_letter_queue(settings: Settings, daemon: str) -> str:
    return f"{settings.queue(daemon)}.dead"


def declare_exchange(channel: Any, settings: Settings) -> None:
    """The durable topic exchange every event is published to (routing key = event type)."""
    channel.exchange_declare(exchange=settings.exchange, exchange_type="topic", durable=True)


def declare_topology(channel: Any, settings: Settings, daemon: str, routing_keys: Sequence[str]) -> str:
    """Declare the exchange, the dead-letter exchange and queue, and the daemon's queue; return its name.

    Quorum queues (the default, `JIT_QUEUE_TYPE`) carry the delivery limit; classic queues, for
    throw-away test brokers only, have none.

    The dead-letter exchange is `direct` and each daemon's messages are dead-lettered with its own
    queue name as routing key: one dead-letter exchange serves every daemon, and a poison message
    of one daemon lands only in that daemon's `.dead` queue (a fanout would copy it to all of them).
    The original routing key survives in the message's `x-death` header.
    """
    queue = settings.queue(daemon)
    dlx = dead_letter_exchange(settings)
    dead = dead_letter_queue(settings, daemon)

    declare_exchange(channel, settings)
    channel.exchange_declare(exchange=dlx, exchange_type="direct", durable=True)
    # Same type as the daemon's queue, so dead letters survive the loss of a node like the messages did.
    channel.queue_declare(queue=dead, durable=True, arguments={"x-queue-type": settings.queue_type})
    channel.queue_bind(queue=dead, exchange=dlx, routing_key=queue)

    arguments: dict[str, Any] = {
        "x-queue-type": settings.queue_type,
        "x-dead-letter-exchange": dlx,
        "x-dead-letter-routing-key": queue,
    }
    if settings.queue_type == "quorum":
        # RabbitMQ 3.10 sets no delivery limit: without one a message that crashes its handler loops forever.
        arguments["x-delivery-limit"] = settings.delivery_limit
    channel.queue_declare(queue=queue, durable=True, arguments=arguments)
    for routing_key in routing_keys:
        channel.queue_bind(queue=queue, exchange=settings.exchange, routing_key=routing_key)
    return queue
