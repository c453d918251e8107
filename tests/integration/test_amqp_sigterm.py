"""SIGTERM on a real consumer process (contract section 1): stop taking messages, finish or requeue
what is in flight within the grace period, exit 0."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from shared.amqp.publisher import Publisher
from shared.amqp.topology import declare_topology
from shared.settings import Settings
from tests.integration import amqp_fixtures
from tests.integration.amqp_fixtures import channel_on, ready_count, settings_for

pytestmark = pytest.mark.rabbitmq
amqp_vhost = amqp_fixtures.amqp_vhost

REPO = Path(__file__).resolve().parents[2]

# A daemon in miniature: its handler sleeps as many seconds as the body says, then acks.
SCRIPT = """
import threading, time
from shared import logs
from shared.amqp.consumer import Consumer, Outcome
from shared.settings import Settings

logs.configure("info", "json")

def handle(delivery):
    print("started", flush=True)
    time.sleep(float(delivery.body))
    print("finished", flush=True)
    return Outcome.ACK

consumer = Consumer(Settings(), "worker", ["work"], handle)
consumer.install_signal_handlers()
threading.Thread(target=lambda: consumer.ready.wait() and print("ready", flush=True), daemon=True).start()
consumer.run()
"""


class Process:
    """The consumer subprocess, with its stdout lines readable with a timeout."""

    def __init__(self, settings: Settings) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
        env |= {
            "JIT_AMQP_URL": settings.amqp_url,
            "JIT_EXCHANGE": settings.exchange,
            "JIT_QUEUE_PREFIX": settings.queue_prefix,
            "JIT_SHUTDOWN_GRACE_SECONDS": str(settings.shutdown_grace_seconds),
        }
        self.popen = subprocess.Popen(
            [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.popen.stdout is not None
        threading.Thread(target=self._pump, args=(self.popen.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.strip())

    def expect(self, wanted: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {wanted!r} from the consumer process; saw {self.seen}")
            try:
                self.seen.append(self._lines.get(timeout=remaining))
            except queue.Empty:
                continue

    def terminate_and_wait(self, within: float) -> tuple[int, float, list[dict[str, Any]]]:
        began = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout=within)
        took = time.monotonic() - began
        assert self.popen.stderr is not None
        lines = [json.loads(line) for line in self.popen.stderr if line.startswith("{")]
        while not self._lines.empty():
            self.seen.append(self._lines.get())
        return code, took, lines


@contextmanager
def consumer_process(settings: Settings) -> Iterator[Process]:
    process = Process(settings)
    try:
        yield process
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()
        for stream in (process.popen.stdout, process.popen.stderr):
            if stream is not None:
                stream.close()


def test_sigterm_while_idle_exits_zero_at_once(amqp_vhost: str) -> None:
    """Idle, the consumer does not sit out its grace: a 30 s grace tells "at once" from "waited" on any load."""
    settings = settings_for(amqp_vhost, shutdown_grace_seconds=30.0)
    with consumer_process(settings) as process:
        process.expect("ready")
        code, took, logs = process.terminate_and_wait(within=60)
    assert code == 0 and took < 15
    assert any(line["event"] == "consumer.stopped" for line in logs)


@pytest.mark.parametrize(
    ("grace", "work_seconds", "finished", "acked", "left_in_queue"),
    [
        (15.0, 1.5, True, 1, 0),  # finishes within the grace: acked, gone from the queue
        (1.0, 30.0, False, 0, 1),  # still running at the end of the grace: requeued for another replica
    ],
    ids=["finishes-within-grace", "requeued-past-grace"],
)
def test_sigterm_with_a_handler_in_flight(
    amqp_vhost: str, grace: float, work_seconds: float, finished: bool, acked: int, left_in_queue: int
) -> None:
    settings = settings_for(amqp_vhost, shutdown_grace_seconds=grace)
    with channel_on(settings) as channel:
        queue_name = declare_topology(channel, settings, "worker", ["work"])
    with consumer_process(settings) as process:
        process.expect("ready")
        with Publisher(settings) as publisher:
            publisher.publish("work", str(work_seconds).encode(), message_id="m-1")
        process.expect("started")
        code, took, logs = process.terminate_and_wait(within=grace + 20)
    assert code == 0
    assert took < work_seconds or finished  # past the grace, the exit does not wait for the handler
    assert ("finished" in process.seen) is finished
    stopped = next(line for line in logs if line["event"] == "consumer.stopped")
    assert stopped["acked"] == acked and stopped["requeued_at_stop"] == left_in_queue
    assert ready_count(settings, queue_name) == left_in_queue
