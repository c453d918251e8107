"""What a handler receives (Delivery) and what it answers (Outcome); no pika types leak past here."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Outcome(enum.Enum):
    ACK = "ack"  # done (its effects are committed): the broker forgets the message
    REJECT = "reject"  # poison or invalid: nack without requeue, so it is dead-lettered at once
    REQUEUE = "requeue"  # transient failure: nack with requeue; the quorum delivery limit bounds retries


@dataclass(frozen=True)
class Delivery:
    body: bytes
    routing_key: str
    message_id: str | None
    redelivered: bool
    # Set by quorum queues on redeliveries (absent on the first one): how many times it came back.
    delivery_count: int | None
    headers: Mapping[str, Any] = field(default_factory=dict)
    # The broker user that published it: RabbitMQ refuses a `user_id` that is not the connection's user.
    user_id: str | None = None

    @classmethod
    def from_pika(cls, method: Any, properties: Any, body: bytes) -> Delivery:
        headers: Mapping[str, Any] = dict(properties.headers or {})
        count = headers.get("x-delivery-count")
        return cls(
            body=body,
            routing_key=method.routing_key,
            message_id=properties.message_id,
            redelivered=bool(method.redelivered),
            delivery_count=count if isinstance(count, int) else None,
            headers=headers,
            user_id=properties.user_id,
        )
