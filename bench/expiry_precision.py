"""Expiry precision: how long after a window's `expires_at` does its removal start?

N ELEVATED grants per side (ledger holds written to the database, each account a member on the host) end
staggered over `--spread` seconds on a simulated host (`jit-winrm-sim`, NTLM with message encryption);
real `jit-reaper` processes end them, both sides at once with their windows interleaved (so both see the
same load on a shared machine), each with its own database, host and reaper: `JIT_EXPIRY_TIMERS=0`
(before: the sweep alone, every `sweep_interval_seconds`) and the expiry timers on (after). Per request:
- ended: the ending transaction's instant (`revoking_since`, database) - `expires_at`;
- removal started: when the host received the `revoke` run (the simulator's command log) - `expires_at`.
Goal: removal started p99 under 250 ms.

    .venv/bin/python -m bench.expiry_precision [--requests 1000] [--spread 100] [--engine postgres|sqlite] \\
        [--ps-startup-ms 0] [--out bench/results/expiry_precision.json]

Needs RabbitMQ (JIT_AMQP_URL or the local default) and, for PostgreSQL, the local server (trust). Uses its
own exchange, queue names and database, and removes them afterwards. Writes JSON and a PNG of the
distributions next to it (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from bench.expiry_world import (
    Sims,
    percentiles,
    postgres_server,
    reapers,
    rows,
    seed_grants,
    seed_hosts,
    sims,
    wait_revoked,
)
from bench.scratch import scratch_database
from shared.db.engine import make_engine, session_factory
from shared.db.migrate import upgrade
from shared.routes import delete_all
from shared.settings import Settings
from shared.trust import broker_user, everyone_as

MODES = (("sweep only (before)", 0), ("expiry timers (after)", 1000))
LEAD_SECONDS = 3.0  # the first window ends this long after the rows are written


@dataclass
class Stack:
    """One side of the comparison: its own database, simulated host and reaper settings."""

    label: str
    settings: Settings
    factory: sessionmaker[Session]
    world: Sims
    ids: list[str] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        started = self.world.revoke_runs(0)
        ended, removal = [], []
        for row in rows(self.factory, self.ids):
            ended.append((row["revoking_since"] - row["expires_at"]).total_seconds())
            removal.append(started[row["account_sid"]] - row["expires_at"].timestamp())
        assert self.world.members(0) == 0, "a member was left on the host"
        return {"requests": len(self.ids), "expiry_timers": self.settings.expiry_timers,
                "ended": percentiles(ended), "removal_started": percentiles(removal),
                "removal_started_ms": sorted(round(1000 * x, 2) for x in removal)}


def measure(stacks: list[Stack], n: int, spread: float) -> None:
    """Both sides at once, their windows interleaved: each sees the same load on a shared machine. The
    windows are placed once every side's host is ready (a barrier), so none is due before it is written."""
    ready = threading.Barrier(len(stacks), timeout=600, action=lambda: start.append(
        datetime.now(UTC) + timedelta(seconds=LEAD_SECONDS)))
    start: list[datetime] = []

    def seed(side: int, stack: Stack) -> None:
        def at(k: int) -> datetime:
            if k == 0:
                ready.wait()
            return start[0] + timedelta(seconds=spread * (k + side / len(stacks)) / n)

        stack.ids = seed_grants(stack.factory, stack.world, [(0, k) for k in range(n)], at, datetime.now(UTC))

    with ExitStack() as running:
        for stack in stacks:
            running.enter_context(reapers(stack.settings, 1))
        time.sleep(2)  # the daemons connect and start their sweepers and timers
        with ThreadPoolExecutor(len(stacks)) as pool:
            list(pool.map(seed, range(len(stacks)), stacks))
        for stack in stacks:
            wait_revoked(stack.factory, stack.ids, spread + LEAD_SECONDS + 300)


def run(requests: int, spread: float, engine: str, server: str, amqp: str, ps_startup_ms: float) -> dict[str, Any]:
    with postgres_server(server if engine == "postgres" else "unused") as admin, ExitStack() as cleanup:
        stacks = []
        for label, timers in MODES:
            url, drop_database = scratch_database(engine, admin)
            cleanup.callback(drop_database)
            name = f"bench{uuid.uuid4().hex[:6]}"
            settings = Settings(amqp_url=amqp, database_url=url, exchange=f"{name}.events", queue_prefix=name,
                                publishers=everyone_as(broker_user(amqp)), expiry_timers=timers)
            cleanup.callback(delete_all, settings)
            upgrade(url)
            db = make_engine(url)
            cleanup.callback(db.dispose)
            world = cleanup.enter_context(sims(["127.0.0.1"], processes=1, ps_startup_ms=ps_startup_ms))
            factory = session_factory(db)
            seed_hosts(factory, world, per_host=requests)
            stacks.append(Stack(label, settings, factory, world))
        measure(stacks, requests, spread)
        results = {stack.label: stack.result() for stack in stacks}
    return {"benchmark": "expiry_precision", "cores": os.cpu_count(), "engine": engine, "requests": requests,
            "spread_seconds": spread, "ps_startup_ms": ps_startup_ms,
            "sweep_interval_seconds": stacks[0].settings.sweep_interval_seconds,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "goal": "removal started p99 < 250 ms", "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "results": results}


def plot(report: dict[str, Any], path: Path) -> None:
    """The PNG beside the JSON; skipped (the JSON stands alone) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"no {path.name}: matplotlib is not installed (.venv/bin/pip install matplotlib)")
        return

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, result in report["results"].items():
        values = result["removal_started_ms"]
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
    ax.axvline(250, color="grey", linestyle="--", label="goal: p99 < 250 ms")
    ax.set_xlabel("expires_at -> removal started at the host (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Expiry precision: {report['requests']} windows over {report['spread_seconds']:.0f} s, "
                 f"{report['engine']}, {report['cores']} cores")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=100.0, help="seconds over which the windows end")
    parser.add_argument("--engine", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--server", default="private", help="PostgreSQL admin URL, or \"private\" (default): an "
                        "instance of the benchmark's own")
    parser.add_argument("--amqp", default=os.environ.get("JIT_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--ps-startup-ms", type=float, default=0.0)
    parser.add_argument("--out", default="bench/results/expiry_precision.json")
    args = parser.parse_args()
    report = run(args.requests, args.spread, args.engine, args.server, args.amqp, args.ps_startup_ms)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out.with_suffix(".png"))
    for label, result in report["results"].items():
        print(f"{label}: ended {result['ended']}; removal started {result['removal_started']}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
