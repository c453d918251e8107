"""Ask jit-approval for a credential's elevation status: AMQP request/reply over RabbitMQ direct reply-to."""
import json
import time
import uuid

import pika

REPLY_TO = "amq.rabbitmq.reply-to"  # a pseudo-queue: consume it (no ack) on the channel, then publish


class StatusClient:
    def __init__(self, channel: pika.adapters.blocking_connection.BlockingChannel, exchange: str = "jit.events",
                 user_id: str | None = None) -> None:  # user_id: your broker user (the broker checks it)
        self.channel, self.exchange, self.user_id = channel, exchange, user_id
        self.replies: dict[str, dict[str, object]] = {}
        channel.basic_consume(REPLY_TO, lambda _c, _m, props, body: self.replies.update(
            {props.correlation_id: json.loads(body)}), auto_ack=True)

    def ask(self, secret_id: str, user: str, checkout_id: str | None = None, timeout: float = 5.0) -> dict[str, object]:
        query, cid = {"secret_id": secret_id, "user_id": user, "checkout_id": checkout_id}, str(uuid.uuid4())
        self.channel.basic_publish(self.exchange, "status.query", json.dumps(query).encode(), pika.BasicProperties(
            reply_to=REPLY_TO, correlation_id=cid, content_type="application/json", user_id=self.user_id))
        deadline = time.monotonic() + timeout
        while cid not in self.replies and (left := deadline - time.monotonic()) > 0:
            self.channel.connection.process_data_events(time_limit=left)
        if cid not in self.replies:
            raise TimeoutError("no jit-approval replica answered the status query")
        return self.replies.pop(cid)  # {"status", "action", "reason", "request_id", "state", "expires_at", "ready"}
