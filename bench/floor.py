"""The WinRM floor: what a bare pywinrm client takes to do the runs the daemons did, on reused shells.

`replay` takes the simulator's command log of a benchmark (every PowerShell run the daemons sent, with
its decoded script) and sends the same scripts again with a bare `winrm.protocol.Protocol`: one NTLM
connection and one shell per thread, kept for the whole replay. The runs are split into the two lanes
the stack has, the elevator's and the reaper's, each in a process of its own with `threads` threads (the
per-host cap of each daemon), started together; the order between lanes is not kept, so the floor is
what the host work alone costs, with none of the waiting a lifecycle's order imposes.

`one_operation` times single runs one after another on one shell: one operation's own WinRM time.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

from winrm.protocol import Protocol

from shared.winrm import scripts

ELEVATOR_SCRIPTS = frozenset({"resolve", "add_member", "elevate_known"})
USER = "CORP\\svc-jit"


def _protocol(url: str, password: str) -> Protocol:
    return Protocol(url, transport="ntlm", username=USER, password=password, message_encryption="auto",
                    read_timeout_sec=30, operation_timeout_sec=20)


def _run(protocol: Protocol, shell: str, script: str) -> float:
    started = time.monotonic()
    command = protocol.run_command(shell, scripts.POWERSHELL, scripts.powershell_arguments(script))
    protocol.get_command_output(shell, command)
    protocol.cleanup_command(shell, command)
    return time.monotonic() - started


def _thread(url: str, password: str, runs: Sequence[str], out: list[float]) -> None:
    protocol = _protocol(url, password)
    shell = protocol.open_shell(noprofile=True)
    for script in runs:
        out.append(_run(protocol, shell, script))
    protocol.close_shell(shell)


def _lane(url: str, password: str, runs: Sequence[str], threads: int, barrier: Any, results: Any) -> None:
    latencies: list[float] = []
    workers = [threading.Thread(target=_thread, args=(url, password, runs[i::threads], latencies))
               for i in range(threads)]
    barrier.wait()
    started = time.time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put((started, time.time(), latencies))


def replay(url: str, password: str, log: Sequence[dict[str, Any]], threads: int = 5) -> dict[str, Any]:
    """Send the logged scripts again, elevator's and reaper's lanes at once; seconds and per-run latencies."""
    lanes = [[e["script"] for e in log if e.get("script") and e["script_name"] in ELEVATOR_SCRIPTS],
             [e["script"] for e in log if e.get("script") and e["script_name"] not in ELEVATOR_SCRIPTS]]
    lanes = [lane for lane in lanes if lane]
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(len(lanes)), context.Queue()
    procs = [context.Process(target=_lane, args=(url, password, lane, threads, barrier, results)) for lane in lanes]
    for proc in procs:
        proc.start()
    answers = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(30)
    latencies = [x for answer in answers for x in answer[2]]
    seconds = max(a[1] for a in answers) - min(a[0] for a in answers)
    return {"runs": len(latencies), "seconds": round(seconds, 3), "threads_per_lane": threads, "lanes": len(lanes),
            "run_ms": summary(latencies)}


def one_operation(url: str, password: str, log: Sequence[dict[str, Any]], names: Sequence[str],
                  count: int = 50) -> dict[str, dict[str, float]]:
    """Per script name: up to `count` of its logged runs sent one at a time on one shell (ms)."""
    protocol = _protocol(url, password)
    shell = protocol.open_shell(noprofile=True)
    try:
        out = {}
        for name in names:
            runs = [e["script"] for e in log if e["script_name"] == name][:count]
            if runs:
                out[name] = summary([_run(protocol, shell, script) for script in runs])
        return out
    finally:
        protocol.close_shell(shell)


def percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds (and the count) of durations given in seconds."""
    if not seconds:
        return {"n": 0}
    ordered = sorted(seconds)
    return {"n": len(ordered), "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p99_ms": round(1000 * percentile(ordered, 0.99), 1), "max_ms": round(1000 * ordered[-1], 1)}
