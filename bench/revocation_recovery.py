"""How soon after a host comes back are its pending revocations done?

100 ELEVATED requests (each a real grant: the elevator's resolve and add on a simulated host, run
in-process, so the ledger holds what the reaper removes by SID); the host goes down for 60 s; the 100
check-ins are published while it is down; a real `jit-reaper` process revokes. Prints how long after
the host returned the last request was REVOKED, with the settings used.

    .venv/bin/python -m bench.revocation_recovery                        # PostgreSQL, 60 s outage
    .venv/bin/python -m bench.revocation_recovery --engine sqlite --outage 10 --retry-max 5
Needs RabbitMQ (JIT_AMQP_URL or the local default) and, for PostgreSQL, the local server (trust).
Uses its own exchange, queue names and database, and removes them afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pika
from sqlalchemy import func, select

from bench.scratch import scratch_database
from services.reaper.handlers import ROUTING_KEYS
from shared.amqp.publisher import Publisher
from shared.amqp.topology import declare_topology
from shared.db.engine import make_engine, session_factory, transaction
from shared.db.migrate import upgrade
from shared.db.models import Request
from shared.events import new_event
from shared.routes import delete_all
from shared.settings import Settings
from shared.trust import broker_user, everyone_as
from shared.winrm import MembershipClient
from tests.factories import PASSWORD_ENV, HostSpec, make_grant, seed_config
from winrm_sim import ADMINISTRATORS, SimulatedHost

PASSWORD = "Bench-Pa55word!"


def environment(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIT_")}
    env.update({f"JIT_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None})
    env.update({"JIT_LOG_FORMAT": "json", "JIT_LOG_LEVEL": "warning", PASSWORD_ENV: PASSWORD})
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--amqp", default=os.environ.get("JIT_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--retry-max", type=float, default=30.0, help="JIT_RETRY_MAX_SECONDS (default: the default)")
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()

    url, drop_database = scratch_database(args.engine, args.server)
    logs = tempfile.TemporaryDirectory(prefix="jit-bench-")
    name = f"bench{uuid.uuid4().hex[:6]}"
    settings = Settings(amqp_url=args.amqp, database_url=url, exchange=f"{name}.events", queue_prefix=name,
                        retry_max_seconds=args.retry_max, publishers=everyone_as(broker_user(args.amqp)))
    sim = SimulatedHost(users={"svc-jit": PASSWORD}).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(url)
        engine = make_engine(url)
        factory = session_factory(engine)
        seed_config(factory, [HostSpec("127.0.0.1", sim.port)], secrets_per_host=args.requests)
        client = MembershipClient()
        ids = [make_grant(factory, client, secret_id=f"sec-0-{i}", host="127.0.0.1", checkout_id=f"co-{i}",
                          environ={PASSWORD_ENV: PASSWORD}).id for i in range(args.requests)]
        assert len(sim.members(ADMINISTRATORS)) == args.requests
        with pika.BlockingConnection(pika.URLParameters(args.amqp)) as conn:
            declare_topology(conn.channel(), settings, "reaper", ROUTING_KEYS)
        log = (Path(logs.name) / "reaper.log").open("wb")
        reaper = str(Path(sys.executable).with_name("jit-reaper"))
        procs = [subprocess.Popen([reaper], env=environment(settings), stdout=log, stderr=subprocess.STDOUT)
                 for _ in range(args.replicas)]
        time.sleep(2)  # let the daemons connect; the outage starts after
        sim.down_for(args.outage)
        back = time.time() + args.outage
        with Publisher(settings) as publisher:
            for i in range(args.requests):
                event = new_event("secret.checked_in", {"checkout_id": f"co-{i}", "secret_id": f"sec-0-{i}",
                                                        "reason": "service_closed"}, source="bench")
                publisher.publish(event.type, event.to_json(), message_id=event.id)
        published_at = time.time()
        deadline = back + 10 * args.retry_max + 60
        while time.time() < deadline:
            with transaction(factory) as s:
                done = s.scalar(select(func.count()).where(Request.id.in_(ids), Request.state == "REVOKED"))
                last = s.scalar(select(func.max(Request.ended_at)).where(Request.id.in_(ids)))
                attempts = s.scalar(select(func.max(Request.attempts)).where(Request.id.in_(ids)))
            if done == len(ids):
                break
            time.sleep(0.2)
        assert done == len(ids), f"only {done}/{len(ids)} revoked; log: {log.name}"
        assert last is not None
        lag = last.timestamp() - back
        left = sim.members(ADMINISTRATORS)
        print(f"engine={args.engine} requests={args.requests} replicas={args.replicas} outage={args.outage:.0f} s "
              f"(check-ins published {published_at - (back - args.outage):.1f} s into it)")
        print(f"settings: sweep_interval={settings.sweep_interval_seconds} retry_initial="
              f"{settings.retry_initial_seconds} retry_max={settings.retry_max_seconds} retry_in_process="
              f"{settings.retry_in_process_seconds} lease={settings.lease_seconds} "
              f"revocation_threads={settings.revocation_threads} per_host_concurrency="
              f"{settings.per_host_concurrency} workers={settings.workers}")
        print(f"last revocation {lag:.2f} s after the host returned; max attempts per request {attempts}; "
              f"members left on the host: {len(left)}; finished at {datetime.now(UTC).isoformat()}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        sim.close()
        delete_all(settings)
        drop_database()
        logs.cleanup()


if __name__ == "__main__":
    main()
