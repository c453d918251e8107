"""Real-broker helpers for the shared.amqp tests: fresh vhosts, per-test names, a consumer on a thread.

Each test module gets a vhost of its own (`jit-test-<uuid>`, made and deleted with rabbitmqctl,
which costs ~0.5 s a call) and each test its own exchange and queue names inside it; a test that
closes connections broker-side asks for `fresh_amqp_settings`, a vhost of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pika
import pytest

from shared.settings import Settings


def rabbitmqctl(*args: str) -> str:
    if not shutil.which("rabbitmqctl"):
        pytest.fail("rabbitmqctl not found: these tests need the local RabbitMQ broker")
    done = subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60)
    return done.stdout


@contextmanager
def fresh_vhost() -> Iterator[str]:
    vhost = f"jit-test-{uuid.uuid4().hex}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


def vhost_url(vhost: str, query: str = "") -> str:
    url = f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"
    return f"{url}?{query}" if query else url


def settings_for(vhost: str, **overrides: Any) -> Settings:
    """Settings with names no other test uses; `heartbeat` (seconds) goes into the URL query."""
    name = f"t{uuid.uuid4().hex[:8]}"
    heartbeat = overrides.pop("heartbeat", None)
    url = vhost_url(vhost, f"heartbeat={heartbeat}" if heartbeat is not None else "")
    base: dict[str, Any] = {"delivery_limit": 20, "prefetch": 16, "workers": 8, "shutdown_grace_seconds": 5.0}
    return Settings(amqp_url=url, exchange=f"{name}.events", queue_prefix=name, **(base | overrides))


def vhost_of(settings: Settings) -> str:
    return str(pika.URLParameters(settings.amqp_url).virtual_host)


@pytest.fixture(scope="module")
def amqp_vhost() -> Iterator[str]:
    with fresh_vhost() as vhost:
        yield vhost


@pytest.fixture
def amqp_settings(amqp_vhost: str) -> Settings:
    return settings_for(amqp_vhost)


@pytest.fixture
def fresh_amqp_settings() -> Iterator[Settings]:
    with fresh_vhost() as vhost:
        yield settings_for(vhost)


@contextmanager
def channel_on(settings: Settings) -> Iterator[Any]:
    """A plain pika channel in the settings' vhost, for the test's own look at queues."""
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url(vhost_of(settings))))
    try:
        yield connection.channel()
    finally:
        connection.close()


def ready_count(settings: Settings, queue: str) -> int:
    """Messages ready in `queue` (unacked ones are not counted)."""
    with channel_on(settings) as channel:
        return int(channel.queue_declare(queue=queue, passive=True).method.message_count)


def get_one(settings: Settings, queue: str, timeout: float = 5.0) -> tuple[Any, Any, bytes]:
    """Wait for one message in `queue` and take it (auto-ack): (method, properties, body)."""
    deadline = time.monotonic() + timeout
    with channel_on(settings) as channel:
        while time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue=queue, auto_ack=True)
            if method is not None:
                return method, properties, body
            time.sleep(0.05)
    raise AssertionError(f"no message in {queue} within {timeout} s")


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


