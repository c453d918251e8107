"""RabbitMQ for the daemons: topology, a confirmed publisher and a threaded, draining consumer."""

from shared.amqp.consumer import Consumer
from shared.amqp.delivery import Delivery, Outcome
from shared.amqp.publisher import Publisher, PublishError
from shared.amqp.topology import declare_topology

__all__ = ["Consumer", "Delivery", "Outcome", "PublishError", "Publisher", "declare_topology"]
