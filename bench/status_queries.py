"""Status queries over the broker: queries/s and p99 with 2 jit-approval replicas, against a raw baseline.

Starts 2 real `jit-approval` processes on a scratch database (PostgreSQL by default, or SQLite) with a
seeded configuration and requests, then runs `--clients` client threads (each its own connection and
direct reply-to consumer, as docs/status_client.py does) for `--seconds`, and measures every round trip.
The baseline, in the same run: 2 raw responder processes on a queue declared the same way that answer
a fixed body at once (no parsing, no database): the broker's request/reply round trip alone.

    .venv/bin/python -m bench.status_queries                   # PostgreSQL on 127.0.0.1 (trust auth)
    .venv/bin/python -m bench.status_queries --engine sqlite
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pika

from bench.scratch import scratch_database
from services.approval.main import processor
from services.approval.status_server import QUERY_TTL_MS
from shared.clock import SystemClock
from shared.db.engine import make_engine, session_factory
from shared.db.migrate import upgrade
from shared.events import format_time, new_event
from shared.settings import Settings
from shared.trust import broker_user, everyone_as
from tests.factories import HostSpec, seed_config

REPLY_TO = "amq.rabbitmq.reply-to"
SECRETS = 50


def responder(url: str, exchange: str, queue: str, routing_key: str, ready: Any, stop: Any) -> None:
    """The baseline replica: the same queue arguments and reply path, and nothing else."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True,
                          arguments={"x-queue-type": "classic", "x-message-ttl": QUERY_TTL_MS})
    channel.queue_bind(queue=queue, exchange=exchange, routing_key=routing_key)
    channel.basic_qos(prefetch_count=16)
    body = json.dumps({"status": "NOT_REQUESTED"}).encode()

    def on_message(ch: Any, method: Any, props: Any, _body: bytes) -> None:
        ch.basic_publish("", props.reply_to, body, pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    ready.set()
    while not stop.is_set():
        connection.process_data_events(time_limit=0.2)
    connection.close()


def client(url: str, exchange: str, routing_key: str, until: float, latencies: list[float],
           errors: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    replies: dict[str, bytes] = {}
    channel.basic_consume(REPLY_TO, lambda _c, _m, p, b: replies.__setitem__(p.correlation_id, b), auto_ack=True)
    n = 0
    while time.monotonic() < until:
        n += 1
        query = {"secret_id": f"sec-0-{n % SECRETS}", "user_id": "alice", "checkout_id": f"co-{n % SECRETS}"}
        cid = str(uuid.uuid4())
        started = time.perf_counter()
        channel.basic_publish(exchange, routing_key, json.dumps(query).encode(), pika.BasicProperties(
            reply_to=REPLY_TO, correlation_id=cid, content_type="application/json",
            user_id=broker_user(url) if routing_key == "status.query" else None))
        deadline = time.monotonic() + 10
        while cid not in replies and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.5)
        if cid not in replies:
            errors.append("timeout")
            continue
        latencies.append(time.perf_counter() - started)
        if b'"error"' in replies.pop(cid):
            errors.append("error reply")
    connection.close()


def load(url: str, exchange: str, routing_key: str, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(url, exchange, routing_key, until, latencies, errors))
               for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {"queries": len(ordered), "errors": len(errors), "qps": len(ordered) / elapsed,
            "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))]}


def seed(database_url: str) -> None:
    upgrade(database_url)
    factory = session_factory(make_engine(database_url))
    seed_config(factory, [HostSpec("127.0.0.1", 5985)], secrets_per_host=SECRETS)
    process = processor(factory, SystemClock())
    expires = format_time(datetime.now(UTC) + timedelta(hours=2))
    for i in range(0, SECRETS, 2):  # half the checkouts have a PENDING request
        process(new_event("elevation.requested", {
            "request_id": f"req-{i}", "checkout_id": f"co-{i}", "secret_id": f"sec-0-{i}", "requester_id": "alice",
            "host": "127.0.0.1", "justification": "bench", "checkout_expires_at": expires}, source="bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--server-url", default="postgresql+psycopg://postgres@127.0.0.1/postgres")
    parser.add_argument("--amqp-url", default=os.environ.get("JIT_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    database_url, cleanup = scratch_database(args.engine, args.server_url)
    name = f"bench-status-{uuid.uuid4().hex[:6]}"
    settings = Settings(amqp_url=args.amqp_url, database_url=database_url, exchange=f"{name}.events",
                        queue_prefix=name, queue_type="classic", publishers=everyone_as(broker_user(args.amqp_url)))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("JIT_")},
           **{f"JIT_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None},
           "JIT_LOG_LEVEL": "warning"}
    procs: list[subprocess.Popen[bytes]] = []
    stop = multiprocessing.Event()
    try:
        seed(database_url)
        approval = str(Path(sys.executable).with_name("jit-approval"))
        procs = [subprocess.Popen([approval], env=env, stderr=subprocess.DEVNULL) for _ in range(2)]
        with pika.BlockingConnection(pika.URLParameters(args.amqp_url)) as conn:
            channel = conn.channel()
            channel.exchange_declare(settings.exchange, "topic", durable=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    count = conn.channel().queue_declare(f"{name}.approval.status", passive=True).method.consumer_count
                except pika.exceptions.ChannelClosedByBroker:
                    count = 0
                if count == 2:
                    break
                time.sleep(0.2)
        raw_ready = [multiprocessing.Event() for _ in range(2)]
        raw = [multiprocessing.Process(target=responder, args=(args.amqp_url, settings.exchange, f"{name}.raw",
                                                               "raw.query", ready, stop)) for ready in raw_ready]
        for p in raw:
            p.start()
        for ready in raw_ready:
            ready.wait(30)
        load(args.amqp_url, settings.exchange, "status.query", args.clients, 2)  # warm-up
        baseline = load(args.amqp_url, settings.exchange, "raw.query", args.clients, args.seconds)
        status = load(args.amqp_url, settings.exchange, "status.query", args.clients, args.seconds)
        print(f"engine={args.engine} clients={args.clients} seconds={args.seconds} replicas=2")
        for label, r in (("raw round trip (baseline)", baseline), ("status.query (2 x jit-approval)", status)):
            print(f"  {label:34s} {r['qps']:8.0f} queries/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
                  f"  ({int(r['queries'])} queries, {int(r['errors'])} errors)")
        print(f"  ratio status/baseline: throughput {status['qps'] / baseline['qps']:.2f}x, "
              f"p99 {status['p99_ms'] / baseline['p99_ms']:.1f}x")
    finally:
        stop.set()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        with pika.BlockingConnection(pika.URLParameters(args.amqp_url)) as conn:
            channel = conn.channel()
            for queue in (f"{name}.raw", f"{name}.approval.status", f"{name}.approval", f"{name}.elevator",
                          f"{name}.reaper", f"{name}.journal", f"{name}.approval.dead", f"{name}.elevator.dead",
                          f"{name}.reaper.dead"):
                channel.queue_delete(queue)
            channel.exchange_delete(f"{settings.exchange}.dlx")
            channel.exchange_delete(settings.exchange)
        cleanup()


if __name__ == "__main__":
    main()
