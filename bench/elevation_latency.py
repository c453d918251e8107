"""Latency of one elevation: `elevation.approved` published -> `elevation.elevated` received.

Starts one jit-winrm-sim host (no added latency), a fresh database (an SQLite file, or a scratch
PostgreSQL database created and dropped here), one `jit-elevator` process, and publishes approved
requests one at a time, timing each until its `elevation.elevated` arrives on a queue of our own.
The raw baseline, measured in the same run against the same host, is the WinRM work alone: the
adapter's `resolve` and `add_member` by SID (add + verifying listing) called directly; the ratio is what
the whole pipeline (broker, database, outbox, the claim, the ledger hold and the record) costs on top of it.

    .venv/bin/python -m bench.elevation_latency --db sqlite --requests 50      # from the repository root
    .venv/bin/python -m bench.elevation_latency --db postgres --requests 50

Uses the broker's default vhost with exchange and queue names of its own, and removes them after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika

from bench.scratch import scratch_database
from shared.amqp.publisher import Publisher
from shared.db.engine import make_engine, session_factory
from shared.db.migrate import upgrade
from shared.events import format_time, new_event
from shared.routes import delete_all
from shared.settings import Settings
from shared.trust import broker_user, everyone_as
from shared.winrm import Credentials, HostEndpoint, MembershipClient
from tests.factories import ADMINISTRATORS, PASSWORD_ENV, HostSpec, make_request, seed_config
from winrm_sim import SimulatedHost

PASSWORD = "Bench-Pa55word!"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(settings: Settings, count: int, sim: SimulatedHost) -> list[float]:
    factory = session_factory(make_engine(settings.database_url))
    seed_config(factory, [HostSpec(sim.address, sim.port)], secrets_per_host=count)
    requests = [make_request(factory, secret_id=f"sec-0-{i}", host=sim.address) for i in range(count)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    env |= {f"JIT_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None}
    env |= {PASSWORD_ENV: PASSWORD, "JIT_LOG_LEVEL": "warning", "JIT_LOG_FORMAT": "json"}
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = connection.channel()
    channel.exchange_declare(exchange=settings.exchange, exchange_type="topic", durable=True)
    tap = channel.queue_declare(queue="", exclusive=True).method.queue
    for outcome in ("elevation.elevated", "elevation.failed"):
        channel.queue_bind(queue=tap, exchange=settings.exchange, routing_key=outcome)
    daemon = subprocess.Popen([str(Path(sys.executable).with_name("jit-elevator"))], env=env)
    latencies: list[float] = []
    try:
        with Publisher(settings) as publisher:
            wait_for_consumer(settings)
            for request in requests:
                event = new_event("elevation.approved", {
                    "request_id": request.id, "checkout_id": request.checkout_id, "secret_id": request.secret_id,
                    "approver_id": "bob", "expires_at": format_time(request.checkout_expires_at)}, source="bench")
                started = time.perf_counter()
                publisher.publish(event.type, event.to_json(), message_id=event.id)
                for _method, _props, body in channel.consume(tap, auto_ack=True, inactivity_timeout=30):
                    if body is None:
                        raise RuntimeError(f"no elevation.elevated for {request.id} within 30 s")
                    got = json.loads(body)
                    if got["data"].get("request_id") == request.id:
                        if got["type"] != "elevation.elevated":
                            raise RuntimeError(f"{request.id}: {got['type']} {got['data']}")
                        latencies.append(time.perf_counter() - started)
                        break
    finally:
        daemon.terminate()
        daemon.wait(30)
        channel.cancel()
        connection.close()
        delete_all(settings)
        factory.kw["bind"].dispose()
    return latencies


def raw_baseline(sim: SimulatedHost, count: int) -> list[float]:
    """The WinRM work alone, as the elevator does it: resolve, then add by SID (verified); a remove by SID
    resets, untimed."""
    client = MembershipClient()
    host = HostEndpoint(address=sim.address, scheme="http", port=sim.port, transport="basic", verify_tls=False)
    creds = Credentials(username="svc-jit", password=PASSWORD)
    timings = []
    for i in range(count):
        started = time.perf_counter()
        resolved = client.resolve(host, creds, ADMINISTRATORS, f"raw-{i}")
        client.add_member(host, creds, resolved.group_sid, resolved.account_sid)
        timings.append(time.perf_counter() - started)
        client.remove_member(host, creds, resolved.group_sid, resolved.account_sid)
    return timings


def wait_for_consumer(settings: Settings, timeout: float = 30.0) -> None:
    queue = settings.queue("elevator")
    deadline = time.monotonic() + timeout
    probe = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        while time.monotonic() < deadline:
            try:
                if probe.channel().queue_declare(queue=queue, passive=True).method.consumer_count:
                    return
            except pika.exceptions.ChannelClosedByBroker:  # not declared yet
                pass
            time.sleep(0.1)
    finally:
        probe.close()
    raise RuntimeError(f"jit-elevator did not start consuming {queue} within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = parser.parse_args()
    name = f"bench{uuid.uuid4().hex[:8]}"
    url, drop_database = scratch_database("sqlite" if args.db == "sqlite" else "postgres", args.postgres_url)
    try:
        with SimulatedHost(users={"svc-jit": PASSWORD}) as sim:
            upgrade(url)
            settings = Settings(amqp_url=args.amqp_url, database_url=url, exchange=f"{name}.events",
                                queue_prefix=name, publishers=everyone_as(broker_user(args.amqp_url)))
            latencies = measure(settings, args.requests, sim)
            baseline = raw_baseline(sim, args.requests)
    finally:
        drop_database()
    ms = [x * 1000 for x in latencies]
    raw = statistics.median(baseline) * 1000
    print(f"{args.db}: {len(ms)} elevations, approved -> elevated: median {statistics.median(ms):.1f} ms, "
          f"p95 {percentile(ms, 0.95):.1f} ms, min {min(ms):.1f} ms, max {max(ms):.1f} ms")
    print(f"raw baseline (adapter resolve + add by SID alone, same host, same run): median {raw:.1f} ms; "
          f"pipeline / raw = {statistics.median(ms) / raw:.2f}")


if __name__ == "__main__":
    main()
