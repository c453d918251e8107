"""How this project opens a RabbitMQ connection, and how long it waits before trying again.

Owns the connection parameters (the settings URL plus safe defaults for heartbeat and
blocked-connection timeout), the errors that mean "the connection or channel is gone", and the
capped, jittered reconnect backoff shared by the consumer and the publisher.

The setting may name the nodes of a cluster (URLs separated by commas): a connection tries them in
turn and takes the first that answers. A reconnect begins with the node after the one it lost, so it
does not wait first on a node that just went away (a machine that is gone costs a socket timeout).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import ssl
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions

from shared.settings import node_urls

# A heartbeat lets both sides notice a dead peer (a half-open TCP connection) within ~2 intervals.
DEFAULT_HEARTBEAT_SECONDS = 30
# With a resource alarm the broker blocks publishers; give up after this long rather than hang forever.
DEFAULT_BLOCKED_CONNECTION_TIMEOUT_SECONDS = 60.0

TLS_FILES = ("cafile", "certfile", "keyfile")

BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 10.0

# Everything pika raises when the connection or the channel went away (broker restart, network cut,
# heartbeat timeout, connection closed by an operator, channel closed by a broker-side error).
# UnroutableError and NackError are AMQPChannelError too: callers that care catch them first.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    OSError,
)


def connection_parameters(url: str, *, name: str) -> list[pika.URLParameters]:
    """The parameters of each node the setting names, in its order (pika tries them in turn)."""
    return [node_parameters(node, name=name) for node in node_urls(url)]


def node_parameters(url: str, *, name: str) -> pika.URLParameters:
    """One node URL's parameters; heartbeat and blocked_connection_timeout default unless the URL sets them.

    `amqps://`: the server's certificate is verified against the system CAs, or `cafile=PATH`, and its
    name against the URL's host; `certfile=PATH` (and `keyfile=PATH`) present a client certificate.
    """
    url, tls = _tls_query(url)
    params = pika.URLParameters(url)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "amqps" and "ssl_options" not in query:
        context = ssl.create_default_context(cafile=tls.get("cafile"))
        if "certfile" in tls:
            context.load_cert_chain(tls["certfile"], tls.get("keyfile"))
        params.ssl_options = pika.SSLOptions(context, server_hostname=parts.hostname)
    if "heartbeat" not in query:
        params.heartbeat = DEFAULT_HEARTBEAT_SECONDS
    if "blocked_connection_timeout" not in query:
        params.blocked_connection_timeout = DEFAULT_BLOCKED_CONNECTION_TIMEOUT_SECONDS
    # The name shows in `rabbitmqctl list_connections client_properties`, so an operator can tell us apart.
    properties: dict[str, Any] = dict(params.client_properties or {})
    properties["connection_name"] = f"{name} {socket.gethostname()}:{os.getpid()}"
    params.client_properties = properties
    return params


def _tls_query(url: str) -> tuple[str, dict[str, str]]:
    """Take our TLS file options (`cafile`, `certfile`, `keyfile`) out of the URL's query: pika knows none."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    tls = {k: v for k, v in pairs if k in TLS_FILES}
    rest = urlencode([(k, v) for k, v in pairs if k not in TLS_FILES])
    return urlunsplit(parts._replace(query=rest)), tls


def connect(url: str, *, name: str, after: str | None = None) -> pika.BlockingConnection:
    """A connection to the first node of `url` that answers, beginning after the node `after` (see node_of)."""
    return pika.BlockingConnection(rotated(connection_parameters(url, name=name), after))


def rotated(nodes: list[pika.URLParameters], after: str | None) -> list[pika.URLParameters]:
    """The nodes in turn, beginning with the one after `after` (`host:port`); as given when it is not one of them."""
    names = [f"{params.host}:{params.port}" for params in nodes]
    if after not in names:
        return nodes
    start = names.index(after) + 1
    return nodes[start:] + nodes[:start]


def node_of(connection: pika.BlockingConnection) -> str:
    """`host:port` of the node a connection reached (for logs: which node a reconnect landed on)."""
    params = getattr(getattr(connection, "_impl", None), "params", None)  # pika keeps the node it used there
    return f"{params.host}:{params.port}" if params is not None else "unknown"


def heartbeat_of(params: pika.URLParameters) -> float | None:
    """The heartbeat we asked for, or None when disabled or left to the broker."""
    value = params.heartbeat
    return float(value) if isinstance(value, int | float) and value > 0 else None


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before reconnect `attempt` (0-based): exponential, capped, jittered.

    The jitter keeps many replicas that lost the broker together from reconnecting in lockstep.
    """
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_INITIAL_SECONDS * 2 ** min(attempt, 16))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a connection that may already be dead; on the way out there is nothing useful to do with an error."""
    if connection is None or not connection.is_open:
        return
    with contextlib.suppress(*CONNECTION_ERRORS):
        connection.close()
