"""Steady latency: lifecycles at a steady rate through the real stack (bench/stack.py), at zero simulated cost and
with a PowerShell start of 300 ms, against one operation's own WinRM time measured in the same run.

    .venv/bin/python -m bench.steady [--rate 20] [--seconds 60] [--accounts 300] [--costs 0,300] \\
        [--settle 15] [--per-host-concurrency N] [--elevators N] [--out bench/results/steady.json]

One stack; a warm-up burst grants each of `--accounts` accounts once (so their SIDs are known, as in a
running deployment), then `--settle` seconds of nothing (the burst's aftermath: the reconciler's first
listing, outbox marks, PostgreSQL's autovacuum of the burst's rows, is not the steady rate's), then for
each cost (the simulator's `--ps-startup-ms`, set at run time through its
control endpoint) `rate` requests a second for `seconds`, each checked in as soon as it is elevated.
Reported per cost: request -> elevated and check-in -> revoked p50/p99/max; one operation's own WinRM
time (the same scripts, sent one at a time by a bare pywinrm client on one shell: bench/floor.py); and
lease waits: revocations that ended a lease or more (JIT_LEASE_SECONDS + JIT_RETRY_IN_PROCESS_SECONDS)
after their check-in, or took more than one attempt. Goal: each p99 within 200 ms of its operation's
own p50, and no lease wait.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.floor import one_operation, summary
from bench.plots import distributions, latency_panels, save
from bench.stack import PASSWORD, Lifecycle, Stack, drive, outcomes, stop_on_sigterm
from shared.settings import Settings

DRAIN_SECONDS = 900.0
OPERATIONS = {"request_to_elevated": "elevate_known", "checkin_to_revoked": "revoke"}


def _seconds(lifecycles: list[Lifecycle], start: str, end: str) -> list[float]:
    return [s for lc in lifecycles if (s := lc.span(start, end)) is not None]


def measure(stack: Stack, rate: float, seconds: float, lease: float) -> tuple[dict[str, Any], list[Lifecycle]]:
    mark = len(stack.sim_log())
    # Wait for every lifecycle to end (a saturated stack drains its backlog): the next cost must not start
    # with this one's requests still queued.
    lifecycles = drive(stack, int(rate * seconds), rate=rate, timeout=max(lease + 60, DRAIN_SECONDS))
    log = stack.sim_log()[mark:]
    own = one_operation(stack.url, PASSWORD, log, list(OPERATIONS.values()), count=40)
    result: dict[str, Any] = {"lifecycles": len(lifecycles), "rate": rate, "seconds": seconds,
                              "outcomes": outcomes(lifecycles),
                              "operation_ms": own}
    for name, (start, end) in {"request_to_elevated": ("requested", "elevated"),
                               "checkin_to_revoked": ("checked_in", "revoked")}.items():
        result[name] = summary(_seconds(lifecycles, start, end))
        op = own.get(OPERATIONS[name], {})
        if "p99_ms" in result[name] and "p50_ms" in op:
            result[name]["p99_over_operation_ms"] = round(result[name]["p99_ms"] - op["p50_ms"], 1)
    result["lease_waits"] = sum(1 for s in _seconds(lifecycles, "checked_in", "revoked") if s >= lease)
    result["revocations_retried"] = sum(1 for lc in lifecycles if (lc.revoked.get("attempts") or 1) > 1)
    result["scripts"] = {n: sum(1 for e in log if e["script_name"] == n) for n in {e["script_name"] for e in log}}
    return result, lifecycles


def run(rate: float, seconds: float, accounts: int, costs: list[float], folder: Path, *, settle: float = 15.0,
        per_host: int | None = None, elevators: int = 1) -> dict[str, Any]:
    lease = Settings().lease_seconds + Settings().retry_in_process_seconds
    results: dict[str, Any] = {}
    latencies: dict[str, dict[str, list[float]]] = {}
    env = {} if per_host is None else {"JIT_PER_HOST_CONCURRENCY": str(per_host)}
    with Stack(folder, secrets=accounts, daemon_env=env, replicas={"elevator": elevators}) as stack:
        drive(stack, accounts)  # warm-up: every account's first grant (its SIDs learnt)
        for cost in costs:
            stack.sim_post("cost", {"ps_startup_ms": cost, "latency_ms": 0.0})
            time.sleep(settle)
            results[f"{cost:g}ms"], lifecycles = measure(stack, rate, seconds, lease)
            latencies[f"ps-startup {cost:g} ms"] = {
                "request_to_elevated_ms": [1000 * s for s in _seconds(lifecycles, "requested", "elevated")],
                "checkin_to_revoked_ms": [1000 * s for s in _seconds(lifecycles, "checked_in", "revoked")]}
    return {"bench": "steady", "cores": os.cpu_count(), "rate": rate, "seconds": seconds, "accounts": accounts,
            "settle_seconds": settle, "per_host_concurrency": per_host or Settings().per_host_concurrency,
            "elevators": elevators,
            "lease_seconds": lease, "results": results, "latencies": latencies}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--costs", default="0,300", help="the simulator's --ps-startup-ms values, comma-separated")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds of nothing before each cost's rate")
    parser.add_argument("--per-host-concurrency", type=int, default=None,
                        help="JIT_PER_HOST_CONCURRENCY of the daemons (default: the shipped default)")
    parser.add_argument("--elevators", type=int, default=1, help="jit-elevator processes (replicas)")
    parser.add_argument("--out", default="")
    parser.add_argument("--logs", default="", help="folder for the daemons' logs (default: a temporary one)")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    costs = [float(c) for c in args.costs.split(",")]
    with tempfile.TemporaryDirectory(prefix="jit-steady-") as tmp:
        report = run(args.rate, args.seconds, args.accounts, costs, Path(args.logs or tmp), settle=args.settle,
                     per_host=args.per_host_concurrency, elevators=args.elevators)
    print(json.dumps({k: v for k, v in report.items() if k != "latencies"}, indent=1))
    title = f"steady {args.rate:g}/s for {args.seconds:g} s, {report['cores']} cores"
    save(report, args.out, lambda png: distributions(png, title, latency_panels(report), log_x=True))


if __name__ == "__main__":
    main()
