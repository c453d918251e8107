"""Pipeline: the lifecycles of bench/burst.py with WinRM at zero (the in-memory port, bench/fake_port.py), against
the raw floor of the same broker and database measured in the same run.

    .venv/bin/python -m bench.pipeline [--lifecycles 200] [--out bench/results/pipeline.json]

The stack (bench/stack.py) runs jit-approval as shipped and jit-elevator and jit-reaper with the in-memory
port; a burst of N first grants, then the same N accounts again. A lifecycle is five events on the
exchange (requested, approved, elevated, checked_in, revoked), each published with a confirm, consumed
and acked by a daemon, with its database work committed: the cost per event is the burst's wall time
divided by 5 N. The raw floor does per event exactly one confirmed publish, one consume and ack and one
committed row, with plain pika and SQLAlchemy, on a queue of the same type (quorum) in the stack's vhost
and a table of its own in the stack's database: one publisher and one consumer running at once.
Goal: the cost per event at most 2x the floor's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import sqlalchemy as sa

from bench.burst import measure, ms
from bench.plots import distributions, latency_panels, save
from bench.stack import Stack, stop_on_sigterm
from shared.db.engine import make_engine
from shared.settings import Settings

EVENTS_PER_LIFECYCLE = 5
REPO = Path(__file__).resolve().parent.parent


def raw_floor(settings: Settings, events: int) -> dict[str, Any]:
    """`events` messages: confirmed publish -> consume -> INSERT + COMMIT -> ack; from first publish to last ack."""
    queue_name = f"bench-floor-{uuid.uuid4().hex[:6]}"
    engine = make_engine(settings.database_url)
    table = sa.Table(f"bench_floor_{uuid.uuid4().hex[:6]}", sa.MetaData(), sa.Column("id", sa.String, primary_key=True),
                     sa.Column("body", sa.LargeBinary))
    table.create(engine)
    setup = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    setup.channel().queue_declare(queue_name, durable=True, arguments={"x-queue-type": settings.queue_type})
    body = json.dumps({"specversion": "1.0", "type": "elevation.requested", "data": {"x": "y" * 300}}).encode()
    done = threading.Event()
    finished: list[float] = []

    def consume() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=settings.prefetch)
        for seen, (method, properties, payload) in enumerate(channel.consume(queue_name, inactivity_timeout=60), 1):
            if method is None:
                break
            with engine.begin() as conn:
                conn.execute(table.insert().values(id=properties.message_id, body=payload))
            channel.basic_ack(method.delivery_tag)
            if seen == events:
                break
        finished.append(time.monotonic())
        channel.cancel()
        connection.close()
        done.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    publisher = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    channel = publisher.channel()
    channel.confirm_delivery()
    started = time.monotonic()
    for _ in range(events):
        channel.basic_publish("", queue_name, body, pika.BasicProperties(
            delivery_mode=2, message_id=uuid.uuid4().hex, content_type="application/cloudevents+json"),
            mandatory=True)
    done.wait(600)
    seconds = (finished[0] if finished else time.monotonic()) - started
    publisher.close()
    setup.channel().queue_delete(queue_name)
    setup.close()
    table.drop(engine)
    engine.dispose()
    return {"events": events, "seconds": round(seconds, 3), "ms_per_event": round(1000 * seconds / events, 3)}


def run(count: int, folder: Path) -> dict[str, Any]:
    argv = {name: [sys.executable, "-m", "bench.fake_port", name] for name in ("elevator", "reaper")}
    results: dict[str, Any] = {}
    latencies: dict[str, dict[str, list[float]]] = {}
    env = {"PYTHONPATH": str(REPO), "BENCH_FAKE_ACCOUNTS": str(count), "BENCH_FAKE_HOST": "127.0.0.1"}
    with Stack(folder, secrets=count, daemon_argv=argv, daemon_env=env) as stack:
        assert stack.settings is not None
        for phase in ("first_grants", "known_accounts"):
            result, lifecycles, _log = measure(stack, count)
            latencies[phase] = {"request_to_elevated_ms": ms(lifecycles, "requested", "elevated"),
                                "checkin_to_revoked_ms": ms(lifecycles, "checked_in", "revoked")}
            result["ms_per_event"] = round(1000 * result["seconds"] / (EVENTS_PER_LIFECYCLE * count), 3)
            floor = raw_floor(stack.settings, EVENTS_PER_LIFECYCLE * count)
            result["floor"] = floor
            result["times_floor"] = round(result["ms_per_event"] / floor["ms_per_event"], 2)
            for key in ("powershell_runs_per_lifecycle", "shells_per_lifecycle", "ntlm_handshakes_per_lifecycle",
                        "http_requests_per_lifecycle", "scripts"):
                result.pop(key, None)  # the simulator is not used: the WinRM port is in memory
            result["cpu_ms_per_event"] = {k: round(v / EVENTS_PER_LIFECYCLE, 2)
                                          for k, v in result.pop("cpu_ms_per_lifecycle").items() if k != "winrm-sim"}
            results[phase] = result
    return {"bench": "pipeline", "cores": os.cpu_count(), "events_per_lifecycle": EVENTS_PER_LIFECYCLE,
            "queue_type": Settings().queue_type, "results": results, "latencies": latencies}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifecycles", type=int, default=200)
    parser.add_argument("--out", default="")
    parser.add_argument("--logs", default="", help="folder for the daemons' logs (default: a temporary one)")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="jit-pipeline-") as tmp:
        report = run(args.lifecycles, Path(args.logs or tmp))
    print(json.dumps({k: v for k, v in report.items() if k != "latencies"}, indent=1))
    title = f"pipeline (WinRM in memory), burst of {args.lifecycles}, {report['cores']} cores"
    save(report, args.out, lambda png: distributions(png, title, latency_panels(report)))


if __name__ == "__main__":
    main()
