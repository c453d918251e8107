"""Burst: N lifecycles at once through the real stack (bench/stack.py) on one simulated host, against the WinRM
floor measured in the same run.

    .venv/bin/python -m bench.burst [--lifecycles 200] [--ps-startup-ms 0] [--latency-ms 0] \\
        [--out bench/results/burst_0ms.json]

Two bursts on one stack: *first grants* (N accounts never granted before: the elevator resolves each
first) and *known accounts* (the same N accounts again: their SIDs are in the ledger). Each lifecycle is
requested -> approved by policy -> elevated, then checked in -> revoked (the driver checks in as soon as
the elevation is announced). Reported per burst: lifecycles/s (first request published to last
revocation received), request -> elevated and check-in -> revoked p50/p99/max, and the PowerShell runs,
shells and NTLM handshakes per lifecycle from the simulator's counters. The floor (bench/floor.py)
replays the very scripts of that burst, from the simulator's command log, with bare pywinrm clients on
reused shells (the elevator's runs and the reaper's runs in one process each, 5 threads each, like the
daemons' per-host cap). Goal: lifecycles/s at least 80% of the floor's.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import tempfile
from pathlib import Path
from typing import Any

from bench import cpu
from bench.floor import replay, summary
from bench.plots import distributions, latency_panels, save
from bench.stack import PASSWORD, Lifecycle, Stack, drive, outcomes, stop_on_sigterm
from shared.settings import Settings


def measure(stack: Stack, count: int) -> tuple[dict[str, Any], list[Lifecycle], list[dict[str, Any]]]:
    assert stack.settings is not None
    mark, before = len(stack.sim_log()), stack.sim_counters()
    cpu_before = cpu.reading(stack.pids, stack.settings.database_url)
    lifecycles = drive(stack, count)
    cpu_spent = cpu.spent(cpu_before, cpu.reading(stack.pids, stack.settings.database_url))
    log, after = stack.sim_log()[mark:], stack.sim_counters()
    done = [lc for lc in lifecycles if "revoked" in lc.times]
    seconds = max(lc.times["revoked"] for lc in done) - min(lc.times["requested"] for lc in lifecycles)
    per = {k: round((after[k] - before.get(k, 0)) / count, 3) for k in after}
    result = {
        "lifecycles": count, "outcomes": outcomes(lifecycles), "seconds": round(seconds, 3),
        "lifecycles_per_s": round(count / seconds, 2),
        "powershell_runs_per_lifecycle": per["powershell_runs"], "shells_per_lifecycle": per["shells_created"],
        "ntlm_handshakes_per_lifecycle": per.get("ntlm_handshakes", 0.0),
        "http_requests_per_lifecycle": per["http_requests"],
        "scripts": dict(collections.Counter(e["script_name"] for e in log)),
        "cpu_ms_per_lifecycle": {k: round(1000 * v / count, 2) for k, v in sorted(cpu_spent.items())},
        "revocations_retried": sum(1 for lc in done if (lc.revoked.get("attempts") or 1) > 1),
        "request_to_approved": summary([s for lc in lifecycles if (s := lc.span("requested", "approved"))]),
        "request_to_elevated": summary([s for lc in lifecycles if (s := lc.span("requested", "elevated"))]),
        "checkin_to_revoked": summary([s for lc in lifecycles if (s := lc.span("checked_in", "revoked"))]),
    }
    return result, lifecycles, log


def ms(lifecycles: list[Lifecycle], start: str, end: str) -> list[float]:
    return [1000 * s for lc in lifecycles if (s := lc.span(start, end)) is not None]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _floor(stack: Stack, log: list[dict[str, Any]], count: int) -> dict[str, Any]:
    sim_before, children_before = cpu.process_seconds(stack.pids["winrm-sim"]), _children_cpu()
    floor = replay(stack.url, PASSWORD, log)
    floor["cpu_ms_per_lifecycle"] = {
        "winrm-sim": round(1000 * (cpu.process_seconds(stack.pids["winrm-sim"]) - sim_before) / count, 2),
        "clients": round(1000 * (_children_cpu() - children_before) / count, 2)}
    floor["lifecycles_per_s"] = round(count / floor["seconds"], 2)
    return floor


def run(count: int, ps_startup_ms: float, latency_ms: float, folder: Path,
        before: str | None = None) -> dict[str, Any]:
    """Both bursts on a stack of this tree's daemons and, with `before` (another checkout's folder), on a
    second stack running that checkout's daemons, taking turns, so both see the same machine."""
    variants: dict[str, dict[str, str]] = {"now": {}} | ({"before": {"PYTHONPATH": before}} if before else {})
    results: dict[str, dict[str, Any]] = {v: {} for v in variants}
    latencies: dict[str, dict[str, list[float]]] = {}
    stacks = {v: Stack(folder / v, secrets=count, ps_startup_ms=ps_startup_ms, latency_ms=latency_ms,
                       daemon_env=env) for v, env in variants.items()}
    try:
        for stack in stacks.values():
            stack.start()
        logs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for phase in ("first_grants", "known_accounts"):
            for variant, stack in stacks.items():
                results[variant][phase], lifecycles, logs[variant, phase] = measure(stack, count)
                latencies[f"{variant} {phase}"] = {"request_to_elevated_ms": ms(lifecycles, "requested", "elevated"),
                                                   "checkin_to_revoked_ms": ms(lifecycles, "checked_in", "revoked")}
        # The floors last: a replay sends adds and removals in any order and may leave accounts in the group.
        for (variant, phase), log in logs.items():
            result = results[variant][phase]
            result["floor"] = _floor(stacks[variant], log, count)
            result["fraction_of_floor"] = round(result["lifecycles_per_s"] / result["floor"]["lifecycles_per_s"], 3)
    finally:
        for stack in stacks.values():
            stack.stop()
    return {"bench": "burst", "cores": os.cpu_count(), "ps_startup_ms": ps_startup_ms, "latency_ms": latency_ms,
            "per_host_concurrency": Settings().per_host_concurrency, "before": before, "results": results,
            "latencies": latencies}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifecycles", type=int, default=200)
    parser.add_argument("--ps-startup-ms", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--before", default="", help="a checkout of an earlier commit (e.g. `git archive REV | tar -x "
                        "-C DIR`): its daemons run too, on a stack of their own, taking turns with this tree's")
    parser.add_argument("--out", default="")
    parser.add_argument("--logs", default="", help="folder for the daemons' logs (default: a temporary one)")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="jit-burst-") as tmp:
        report = run(args.lifecycles, args.ps_startup_ms, args.latency_ms, Path(args.logs or tmp), args.before or None)
    print(json.dumps({k: v for k, v in report.items() if k != "latencies"}, indent=1))
    title = f"burst of {args.lifecycles}, ps-startup {args.ps_startup_ms} ms, {report['cores']} cores"
    save(report, args.out, lambda png: distributions(png, title, latency_panels(report)))


if __name__ == "__main__":
    main()
