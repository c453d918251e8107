"""Mass expiry: N elevations with one `expires_at`, spread over H simulated hosts, ended by 1, 2 and 4
`jit-reaper` processes: how long until all are revoked, against the floor the hosts' concurrency sets.

The hosts are `jit-winrm-sim` processes (NTLM with message encryption, `--ps-startup-ms` per PowerShell
run); the grants are written to the database with their ledger holds (`bench/expiry_world.py`). The time
per revocation is measured in the same run by a bare pywinrm client (one reused shell, the same `revoke`
script, one at a time), and the floor is N x that time / (H x JIT_PER_HOST_CONCURRENCY): every host busy
with its per-host cap of removals all the time. Goal: within 1.5x of the floor, more replicas never
slower. The machine's CPU (busy share over the run, /proc/stat) and each process group's CPU seconds
are recorded, to tell a CPU limit from a concurrency one.

    .venv/bin/python -m bench.mass_expiry [--grants 10000] [--hosts 20] [--ps-startup-ms 300] \\
        [--replicas 1,2,4] [--revocation-threads 32] [--out bench/results/mass_expiry.json]
    .venv/bin/python -m bench.mass_expiry --grants 1000 --hosts 4 --out bench/results/mass_expiry_small.json

Needs RabbitMQ (JIT_AMQP_URL or the local default) and the local PostgreSQL (trust). Uses its own
exchange, queue names and database, and removes them afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from winrm.protocol import Protocol

from bench.expiry_world import (
    PASSWORD,
    USER,
    Sims,
    machine_cpu,
    postgres_server,
    process_cpu,
    reapers,
    seed_grants,
    seed_hosts,
    sims,
    wait_revoked,
)
from bench.scratch import scratch_database
from shared.db.engine import make_engine, session_factory
from shared.db.migrate import upgrade
from shared.db.models import Request
from shared.routes import delete_all
from shared.settings import Settings
from shared.trust import broker_user, everyone_as
from shared.winrm import scripts
from tests.factories import ADMINISTRATORS

LEAD_SECONDS = 3.0
FLOOR_RUNS = 12


def time_per_revocation(world: Sims) -> float:
    """Median seconds of one `revoke` run by a bare pywinrm client on a reused shell (host 0)."""
    address, port, _, _ = world.hosts[0]
    protocol = Protocol(f"http://{address}:{port}/wsman", transport="ntlm", username=f"CORP\\{USER}",
                        password=PASSWORD, message_encryption="auto", read_timeout_sec=30, operation_timeout_sec=20)
    shell = protocol.open_shell(noprofile=True)
    samples = []
    for k in range(FLOOR_RUNS):
        name = f"floor-{k}"
        sid = world.control(0, "accounts/resolve", {"name": name})["sid"]
        world.control(0, "members", {"group": ADMINISTRATORS, "member": name})
        script = scripts.render(scripts.REVOKE, {"JIT_GROUP_SID": ADMINISTRATORS, "JIT_MEMBER_SID": sid,
                                                 "JIT_MEMBER": name, "JIT_LOGOFF": "0"})
        started = time.monotonic()
        command = protocol.run_command(shell, scripts.POWERSHELL, scripts.powershell_arguments(script))
        protocol.get_command_output(shell, command)
        protocol.cleanup_command(shell, command)
        samples.append(time.monotonic() - started)
    protocol.close_shell(shell)
    protocol.transport.close_session()
    return statistics.median(samples[2:])  # the first runs pay the handshake


def one_size(factory: Any, world: Sims, settings: Settings, replicas: int, first: int, per_host: int) -> dict[str, Any]:
    hosts = len(world.hosts)
    slots = [(h, first + i) for i in range(per_host) for h in range(hosts)]
    at: list[datetime] = []

    def expires_at(_: int) -> datetime:
        if not at:
            at.append(datetime.now(UTC) + timedelta(seconds=LEAD_SECONDS))
        return at[0]

    with reapers(settings, replicas) as procs:
        time.sleep(3)  # the daemons connect and start their sweepers and timers
        ids = seed_grants(factory, world, slots, expires_at, datetime.now(UTC))
        time.sleep(max((at[0] - datetime.now(UTC)).total_seconds(), 0))
        busy0, total0 = machine_cpu()
        reaper_cpu0 = sum(process_cpu(p.pid) for p in procs)
        sim_cpu0 = sum(process_cpu(p.pid) for p in world.procs)
        wait_revoked(factory, ids, 1800)
        busy1, total1 = machine_cpu()
        reaper_cpu = sum(process_cpu(p.pid) for p in procs) - reaper_cpu0
        sim_cpu = sum(process_cpu(p.pid) for p in world.procs) - sim_cpu0
    with factory() as session:
        last = session.scalar(sa.select(sa.func.max(Request.ended_at)).where(Request.id.in_(ids)))
        ended = session.scalar(sa.select(sa.func.max(Request.revoking_since)).where(Request.id.in_(ids)))
    assert last is not None and ended is not None
    seconds = (last - at[0]).total_seconds()
    left = sum(world.members(h) for h in range(hosts))
    assert left == 0, f"{left} members left on the hosts"
    return {"replicas": replicas, "grants": len(ids), "all_revoked_seconds": round(seconds, 2),
            "all_ended_in_db_seconds": round((ended - at[0]).total_seconds(), 2),
            "revocations_per_s": round(len(ids) / seconds, 1),
            "machine_cpu_busy_percent": round(100 * (busy1 - busy0) / (total1 - total0), 1),
            "reaper_cpu_seconds": round(reaper_cpu, 1), "sim_cpu_seconds": round(sim_cpu, 1),
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def run(grants: int, hosts: int, ps_startup_ms: float, replicas: list[int], threads: int | None,
        server: str, amqp: str, sim_processes: int) -> dict[str, Any]:
    with postgres_server(server) as admin:
        return _run(grants, hosts, ps_startup_ms, replicas, threads, admin, amqp, sim_processes)


def _run(grants: int, hosts: int, ps_startup_ms: float, replicas: list[int], threads: int | None,
         server: str, amqp: str, sim_processes: int) -> dict[str, Any]:
    url, drop_database = scratch_database("postgres", server)
    name = f"bench{uuid.uuid4().hex[:6]}"
    settings = Settings(amqp_url=amqp, database_url=url, exchange=f"{name}.events", queue_prefix=name,
                        publishers=everyone_as(broker_user(amqp)))
    if threads is not None:
        settings = settings.model_copy(update={"revocation_threads": threads})
    per_host = grants // hosts
    db: sa.Engine | None = None
    try:
        upgrade(url)
        db = make_engine(url)
        factory = session_factory(db)
        addresses = [f"127.0.0.{2 + h}" for h in range(hosts)]
        with sims(addresses, processes=min(sim_processes, hosts), ps_startup_ms=ps_startup_ms) as world:
            seed_hosts(factory, world, per_host=per_host * len(replicas))
            per_revocation = time_per_revocation(world)
            floor = per_host * hosts * per_revocation / (hosts * settings.per_host_concurrency)
            results = [one_size(factory, world, settings, r, k * per_host, per_host) for k, r in enumerate(replicas)]
    finally:
        if db is not None:
            db.dispose()
        delete_all(settings)
        drop_database()
    for result in results:
        result["ratio_to_floor"] = round(result["all_revoked_seconds"] / floor, 2)
    return {"benchmark": "mass_expiry", "cores": os.cpu_count(), "grants": per_host * hosts, "hosts": hosts,
            "ps_startup_ms": ps_startup_ms, "per_host_concurrency": settings.per_host_concurrency,
            "revocation_threads": settings.revocation_threads, "sim_processes": min(sim_processes, hosts),
            "time_per_revocation_ms": round(1000 * per_revocation, 1), "floor_seconds": round(floor, 2),
            "goal": "all revoked within 1.5x the floor; more replicas never slower",
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "results": results}


def plot(report: dict[str, Any], path: Path) -> None:
    """The PNG beside the JSON; skipped (the JSON stands alone) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"no {path.name}: matplotlib is not installed (.venv/bin/pip install matplotlib)")
        return

    results = report["results"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["replicas"] for r in results]
    ax.plot(xs, [r["all_revoked_seconds"] for r in results], marker="o", label="all revoked (s)")
    ax.axhline(report["floor_seconds"], color="green", linestyle="--", label="floor: hosts' concurrency")
    ax.axhline(1.5 * report["floor_seconds"], color="grey", linestyle=":", label="goal: 1.5x floor")
    for r in results:
        ax.annotate(f"CPU {r['machine_cpu_busy_percent']:.0f}%", (r["replicas"], r["all_revoked_seconds"]),
                    textcoords="offset points", xytext=(5, 5))
    ax.set_xticks(xs)
    ax.set_xlabel("jit-reaper replicas")
    ax.set_ylabel("seconds from expires_at")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Mass expiry: {report['grants']} grants, {report['hosts']} hosts, ps-startup "
                 f"{report['ps_startup_ms']:.0f} ms, {report['cores']} cores")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--ps-startup-ms", type=float, default=300.0)
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--revocation-threads", type=int, default=None, help="JIT_REVOCATION_THREADS (default: "
                                                                             "the default)")
    parser.add_argument("--sim-processes", type=int, default=4)
    parser.add_argument("--server", default="private", help="PostgreSQL admin URL, or \"private\" (default): an "
                        "instance of the benchmark's own")
    parser.add_argument("--amqp", default=os.environ.get("JIT_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--out", default="bench/results/mass_expiry.json")
    args = parser.parse_args()
    report = run(args.grants, args.hosts, args.ps_startup_ms, [int(r) for r in args.replicas.split(",")],
                 args.revocation_threads, args.server, args.amqp, args.sim_processes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out.with_suffix(".png"))
    print(f"floor {report['floor_seconds']} s ({report['time_per_revocation_ms']} ms per revocation)")
    for r in report["results"]:
        print(f"{r['replicas']} replica(s): all revoked in {r['all_revoked_seconds']} s "
              f"({r['ratio_to_floor']}x floor), CPU busy {r['machine_cpu_busy_percent']}%")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
