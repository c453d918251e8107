"""`jitctl dead-letters list|replay`: look at each daemon's `<prefix>.<daemon>.dead` queue, and re-publish it.

`list` takes nothing for good: it gets each message without acking it and returns them all to the queue
(in their order) when it closes the channel. `replay` re-publishes each message to the events exchange
with its original routing key (from `x-death`) and properties, and acks it from the dead-letter queue
only once the broker confirmed the publish (mandatory: an event no queue takes stays dead). Replaying is
idempotent: every daemon records each consumed event id (its inbox), so an event already applied has no
second effect, and a poison message simply comes back dead. Each run looks at no more messages than the
queue held when it started, so a poison message replayed and dead-lettered again is not looped over.

A message keeps its publisher: RabbitMQ refuses a `user_id` that is not the connection's user, and the
daemons trust events by that user (docs/security.md). A message another broker user published is left
in the queue and reported (replay it as that user), never re-published under the operator's name.
"""

from __future__ import annotations

import argparse
from typing import Any

import pika
import pika.exceptions

from jitctl.common import CliError, load_settings, print_json, print_table, printable
from shared.amqp.connection import CONNECTION_ERRORS, close_quietly, connect, connection_parameters
from shared.amqp.topology import dead_letter_queue
from shared.logs import hide_password
from shared.routes import ROUTES
from shared.settings import Settings

PREVIEW_BYTES = 120
COLUMNS = ("daemon", "message_id", "routing_key", "reason", "count", "size", "body")
# Headers the broker sets on delivery: a copy carried into the re-published message would mislead its consumer.
BROKER_HEADERS = ("x-delivery-count",)


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("dead-letters", help="inspect and replay the daemons' dead-lettered messages")
    commands = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="show the dead letters (nothing is removed)")
    listing.add_argument("--daemon", choices=sorted(ROUTES), help="only this daemon's dead-letter queue")
    listing.add_argument("--limit", type=int, default=100, help="at most this many per queue (default 100)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=list_dead_letters)
    replay = commands.add_parser("replay", help="re-publish each to the events exchange with its original routing "
                                 "key; removed from the dead-letter queue only once the broker confirmed it")
    replay.add_argument("--daemon", choices=sorted(ROUTES), help="only this daemon's dead-letter queue")
    replay.add_argument("--limit", type=int, default=0, help="at most this many per queue (default 0: all)")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(func=replay_dead_letters)


def _daemons(args: argparse.Namespace) -> list[str]:
    return [args.daemon] if args.daemon else sorted(ROUTES)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def death(properties: Any) -> dict[str, Any]:
    """The most recent dead-lettering (RabbitMQ puts it first in `x-death`): reason, queue, routing key, count."""
    deaths = (properties.headers or {}).get("x-death") or []
    first = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    keys = first.get("routing-keys") or []
    return {"routing_key": _text(keys[0]) if keys else None, "reason": _text(first.get("reason") or "") or None,
            "queue": _text(first.get("queue") or "") or None, "count": first.get("count")}


def escaped(body: bytes, limit: int = PREVIEW_BYTES) -> str:
    """The first bytes of a body, safe to print: non-ASCII and control bytes as escapes."""
    text = body[:limit].decode("ascii", "backslashreplace")
    text = "".join(c if 32 <= ord(c) < 127 else f"\\x{ord(c):02x}" for c in text)
    return text + ("..." if len(body) > limit else "")


def describe(daemon: str, properties: Any, body: bytes) -> dict[str, Any]:
    return {"daemon": daemon, "message_id": properties.message_id, **death(properties),
            "publisher": properties.user_id, "size": len(body), "body": escaped(body)}


def _connect(settings: Settings) -> pika.BlockingConnection:
    try:
        return connect(settings.amqp_url, name="jitctl dead-letters")
    except CONNECTION_ERRORS as exc:
        raise CliError(f"RabbitMQ not reachable at {hide_password(settings.amqp_url)} "
                       f"({hide_password(str(exc)) or type(exc).__name__})") from None


def _depth(connection: pika.BlockingConnection, queue: str) -> int:
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0  # never declared: no daemon ran here yet, so nothing was dead-lettered
        raise
    finally:
        if channel.is_open:
            channel.close()


def peek(settings: Settings, daemon: str, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` messages of the daemon's dead-letter queue, all left in it."""
    queue = dead_letter_queue(settings, daemon)
    connection = _connect(settings)
    try:
        depth = _depth(connection, queue)
        channel = connection.channel()
        rows = []
        for _ in range(min(depth, limit) if limit > 0 else depth):
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            rows.append(describe(daemon, properties, body))
        # Unacked messages return to the queue, in order, when the channel closes (a nack would count a delivery).
        return rows
    finally:
        close_quietly(connection)


def replay(settings: Settings, daemon: str, limit: int) -> list[dict[str, Any]]:
    """Re-publish the daemon's dead letters; each row says `replayed` or why it was left in the queue."""
    queue = dead_letter_queue(settings, daemon)
    connection = _connect(settings)
    me = getattr(connection_parameters(settings.amqp_url, name="jitctl")[0].credentials, "username", None)
    rows: list[dict[str, Any]] = []
    try:
        depth = _depth(connection, queue)
        channel = connection.channel()
        channel.confirm_delivery()
        for _ in range(min(depth, limit) if limit > 0 else depth):
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            row = describe(daemon, properties, body)
            rows.append(row)
            routing_key = row["routing_key"]
            if not routing_key:
                row["result"] = "left: no x-death routing key (not dead-lettered by a daemon queue)"
                continue  # stays unacked: returned to the queue at the end, never seen twice in this run
            if properties.user_id and properties.user_id != me:
                row["result"] = (f"left: published by broker user {properties.user_id!r}; replay as that user "
                                 "(the broker keeps who published)")
                continue
            headers = {k: v for k, v in (properties.headers or {}).items() if k not in BROKER_HEADERS}
            out = pika.BasicProperties(
                content_type=properties.content_type, content_encoding=properties.content_encoding,
                headers=headers or None, delivery_mode=properties.delivery_mode or 2,
                priority=properties.priority, correlation_id=properties.correlation_id,
                reply_to=properties.reply_to, expiration=properties.expiration, message_id=properties.message_id,
                timestamp=properties.timestamp, type=properties.type, user_id=properties.user_id,
                app_id=properties.app_id)
            try:
                channel.basic_publish(settings.exchange, routing_key, body, out, mandatory=True)
            except pika.exceptions.UnroutableError:
                row["result"] = f"left: no queue is bound to {routing_key!r} on {settings.exchange}"
                continue
            except pika.exceptions.NackError:
                row["result"] = "left: the broker refused the publish (nack)"
                continue
            channel.basic_ack(method.delivery_tag)  # only now: the broker confirmed the copy
            row["result"] = "replayed"
        return rows
    finally:
        close_quietly(connection)


def _print(rows: list[dict[str, Any]], as_json: bool, columns: tuple[str, ...], empty: str) -> None:
    if as_json:
        print_json(rows)
    elif rows:
        print_table([{k: printable(str(r.get(k))) if r.get(k) is not None else None for k in columns}
                     for r in rows], columns)
    else:
        print(empty)


def list_dead_letters(args: argparse.Namespace) -> int:
    settings = load_settings()
    rows = [row for daemon in _daemons(args) for row in peek(settings, daemon, args.limit)]
    _print(rows, args.json, COLUMNS, "no dead letters")
    return 0


def replay_dead_letters(args: argparse.Namespace) -> int:
    settings = load_settings()
    rows = [row for daemon in _daemons(args) for row in replay(settings, daemon, args.limit)]
    _print(rows, args.json, ("daemon", "message_id", "routing_key", "reason", "result"), "no dead letters to replay")
    if not args.json and rows:
        done = sum(r["result"] == "replayed" for r in rows)
        print(f"replayed {done}, left {len(rows) - done} in the dead-letter queue")
    return 0
