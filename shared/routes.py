"""Which events each daemon consumes, and the broker objects every daemon declares at start-up.

Every daemon declares the queues of all three, so that an event written to the outbox is routable
as soon as any daemon has started (the publisher uses `mandatory=True`: an event no queue takes is
an error, not silence). Events that only upstream consumes (elevated, revoked, denied, ...) are kept
in a bounded journal queue bound to every event type of the contract (not `#`: a `status.query`
request is not an event, and hundreds of them a second would push the real events out), so they are
not dropped before upstream binds its own queue; it keeps the most recent `JOURNAL_MAX_LENGTH` events.
"""

from __future__ import annotations

from shared.amqp.connection import close_quietly, connect
from shared.amqp.topology import declare_topology
from shared.events import EVENT_TYPES
from shared.settings import Settings

ROUTES: dict[str, tuple[str, ...]] = {
    "approval": ("elevation.requested", "elevation.decided", "elevation.extend_requested"),
    "elevator": ("elevation.approved",),
    "reaper": ("secret.checked_in", "elevation.expired", "elevation.revoke_requested"),
}
JOURNAL_MAX_LENGTH = 10_000


def journal_queue(settings: Settings) -> str:
    return settings.queue("journal")


def delete_all(settings: Settings) -> None:
    """Remove every queue and exchange `declare_all` made (the demo and the tests clean up with it)."""
    connection = connect(settings.amqp_url, name="jit topology")
    try:
        channel = connection.channel()
        for daemon in ROUTES:
            channel.queue_delete(settings.queue(daemon))
            channel.queue_delete(f"{settings.queue(daemon)}.dead")
        channel.queue_delete(journal_queue(settings))
        channel.exchange_delete(f"{settings.exchange}.dlx")
        channel.exchange_delete(settings.exchange)
    finally:
        close_quietly(connection)


def declare_all(settings: Settings) -> None:
    connection = connect(settings.amqp_url, name="jit topology")
    try:
        channel = connection.channel()
        for daemon, keys in ROUTES.items():
            declare_topology(channel, settings, daemon, keys)
        channel.queue_declare(queue=journal_queue(settings), durable=True, arguments={
            "x-max-length": JOURNAL_MAX_LENGTH, "x-overflow": "drop-head"})
        for event_type in EVENT_TYPES:
            channel.queue_bind(queue=journal_queue(settings), exchange=settings.exchange, routing_key=event_type)
        # Versions before this bound the journal with `#`; unbinding a binding that does not exist is a no-op.
        channel.queue_unbind(queue=journal_queue(settings), exchange=settings.exchange, routing_key="#")
    finally:
        close_quietly(connection)
