"""Relay: the outbox relay's CPU and wall time per event on PostgreSQL, this tree against another checkout's relay.

    .venv/bin/python -m bench.relay --before DIR [--events 500] [--rounds 3] [--out bench/results/relay.json]

A daemon commits a few events at a time and wakes its relay after each commit, which then publishes
until the outbox is empty. Here: `--events` events committed `per_wake` at a time (1 and 5), each commit
followed by one such wake of the relay (this process, a publisher that only counts), on a scratch
database of the local PostgreSQL. `--before DIR` loads `DIR/shared/db/outbox.py` (e.g. `git archive REV |
tar -x -C DIR`) as the other relay; both run in the same process, rounds taking turns.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.scratch import scratch_database
from shared.db import outbox
from shared.db.engine import make_engine, session_factory, transaction
from shared.db.migrate import upgrade
from shared.events import new_event

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class Counting:
    def __init__(self) -> None:
        self.sent = 0

    def publish(self, routing_key: str, body: bytes, *, message_id: str) -> None:
        self.sent += 1


def _module(folder: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("before_outbox", Path(folder) / "shared/db/outbox.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wake(relay: ModuleType, factory: Any, publisher: Counting) -> None:
    """What `OutboxRelay` does on one wake, in that module's version."""
    if hasattr(relay, "BATCH"):  # since the one-transaction relay: stop after a short batch
        while relay.publish_pending(factory, publisher) >= relay.BATCH:
            pass
    else:
        while relay.publish_pending(factory, publisher):
            pass


def measure(relay: ModuleType, factory: Any, events: int, per_wake: int) -> dict[str, float]:
    publisher, cpu, wall = Counting(), 0.0, 0.0
    for i in range(events // per_wake):
        with transaction(factory) as session:
            for j in range(per_wake):
                outbox.enqueue(session, new_event("elevation.failed", {"request_id": f"r{i}-{j}", "error": "x"},
                                                  source="bench"))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        _wake(relay, factory, publisher)
        cpu += time.process_time() - cpu0
        wall += time.perf_counter() - wall0
    assert publisher.sent == events // per_wake * per_wake, "every event published once"
    return {"cpu_ms_per_event": 1000 * cpu / publisher.sent, "wall_ms_per_event": 1000 * wall / publisher.sent}


def run(before: str, events: int, rounds: int) -> dict[str, Any]:
    relays = {"now": outbox, "before": _module(before)}
    samples: dict[str, list[dict[str, float]]] = {}
    url, drop = scratch_database("postgres", SERVER)
    try:
        upgrade(url)
        engine = make_engine(url)
        factory = session_factory(engine)
        for _ in range(rounds):
            for per_wake in (1, 5):
                for name, relay in relays.items():
                    samples.setdefault(f"{name} {per_wake}", []).append(measure(relay, factory, events, per_wake))
        engine.dispose()
    finally:
        drop()
    results = {key: {k: round(statistics.median(s[k] for s in runs), 3) for k in runs[0]}
               for key, runs in samples.items()}
    return {"bench": "relay", "cores": os.cpu_count(), "events": events, "rounds": rounds, "before": before,
            "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a checkout of an earlier commit")
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    report = run(args.before, args.events, args.rounds)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
