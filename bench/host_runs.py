"""Lifecycles at the host: PowerShell runs, shells and NTLM handshakes per lifecycle, and lifecycles/s, for
the adapter as it was (a fresh connection and shell per run; elevation = resolve + add, revocation =
remove + sessions), as it is (pooled shells; a known SID: elevate_known; revocation: revoke), and the
WinRM floor (a bare pywinrm Protocol doing the same number of runs on one reused shell), all measured in
the same run against one in-process jit-winrm-sim (NTLM with message encryption over HTTP).

    .venv/bin/python -m bench.host_runs [--lifecycles 200] [--ps-startup-ms 0] [--latency-ms 0] \\
        [--threads 5] [--out bench/results/host_runs.json]

Every lifecycle grants and ends one account whose SID an earlier grant learnt (the common case: the
first grant of an account on a host still resolves first, one run more). Writes JSON and, when
matplotlib is installed, a PNG of the per-lifecycle latency distribution next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from winrm.protocol import Protocol

from shared.winrm import Credentials, HostEndpoint, MembershipClient, scripts
from winrm_sim import SimulatedHost

ADMINS = "S-1-5-32-544"
USER, PASSWORD = "svc-jit", "Bench-Pa55word!"


def _sim(ps_startup_ms: float, latency_ms: float) -> SimulatedHost:
    host = SimulatedHost(users={USER: PASSWORD}, ps_startup_ms=ps_startup_ms, latency_ms=latency_ms)
    return host.start()


def _before(client: MembershipClient, ep: HostEndpoint, cr: Credentials, name: str) -> None:
    resolved = client.resolve(ep, cr, ADMINS, name)
    client.add_member(ep, cr, ADMINS, resolved.account_sid)
    client.remove_member(ep, cr, ADMINS, resolved.account_sid)
    client.list_sessions(ep, cr, name)


def _after(client: MembershipClient, ep: HostEndpoint, cr: Credentials, name: str, sid: str) -> None:
    answer = client.elevate_known(ep, cr, ADMINS, name, sid)
    assert answer.sid_changed is None
    client.revoke(ep, cr, ADMINS, sid, name, logoff=False)


def _floor_worker(host: SimulatedHost, names: list[str], sids: dict[str, str], out: list[float]) -> None:
    """A bare pywinrm client: one connection, one shell, two runs per lifecycle (the same scripts)."""
    protocol = Protocol(host.url, transport="ntlm", username=f"CORP\\{USER}", password=PASSWORD,
                        message_encryption="auto", read_timeout_sec=30, operation_timeout_sec=20)
    shell = protocol.open_shell(noprofile=True)
    for name in names:
        started = time.monotonic()
        for script, data in ((scripts.ELEVATE_KNOWN, {"JIT_GROUP_SID": ADMINS, "JIT_MEMBER": name,
                                                      "JIT_MEMBER_SID": sids[name]}),
                             (scripts.REVOKE, {"JIT_GROUP_SID": ADMINS, "JIT_MEMBER_SID": sids[name],
                                               "JIT_MEMBER": name, "JIT_LOGOFF": "0"})):
            command = protocol.run_command(shell, scripts.POWERSHELL,
                                           scripts.powershell_arguments(scripts.render(script, data)))
            protocol.get_command_output(shell, command)
            protocol.cleanup_command(shell, command)
        out.append(time.monotonic() - started)
    protocol.close_shell(shell)


def _measure(host: SimulatedHost, threads: int, names: list[str],
             one: Callable[[str], None] | None, floor_sids: dict[str, str] | None = None) -> dict[str, Any]:
    host.host.changes.clear()
    before = dict(host.counters)
    latencies: list[float] = []
    lock = threading.Lock()
    chunks = [names[i::threads] for i in range(threads)]

    def work(chunk: list[str]) -> None:
        if one is None:
            out: list[float] = []
            _floor_worker(host, chunk, floor_sids or {}, out)
            with lock:
                latencies.extend(out)
            return
        for name in chunk:
            started = time.monotonic()
            one(name)
            with lock:
                latencies.append(time.monotonic() - started)

    started = time.monotonic()
    workers = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    n = len(names)
    delta = {k: host.counters[k] - before.get(k, 0) for k in host.counters}
    ordered = sorted(latencies)
    return {"lifecycles": n, "seconds": round(elapsed, 3), "lifecycles_per_s": round(n / elapsed, 1),
            "powershell_runs_per_lifecycle": round(delta["powershell_runs"] / n, 2),
            "shells_per_lifecycle": round(delta["shells_created"] / n, 3),
            "ntlm_handshakes_per_lifecycle": round(delta["ntlm_handshakes"] / n, 3),
            "http_requests_per_lifecycle": round(delta["http_requests"] / n, 2),
            "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p99_ms": round(1000 * ordered[min(n - 1, int(0.99 * n))], 1),
            "max_ms": round(1000 * ordered[-1], 1), "latencies_ms": [round(1000 * x, 2) for x in latencies]}


def run(lifecycles: int, ps_startup_ms: float, latency_ms: float, threads: int) -> dict[str, Any]:
    host = _sim(ps_startup_ms, latency_ms)
    try:
        ep = HostEndpoint(host.address, scheme="http", port=host.port, transport="ntlm")
        cr = Credentials(f"CORP\\{USER}", PASSWORD)
        names = [f"CORP\\bench{i}" for i in range(lifecycles)]
        sids = {name: host.sid_of(name) for name in names}
        old = MembershipClient(max_shells_per_host=threads, pool_idle_sec=0)
        new = MembershipClient(max_shells_per_host=threads)
        results = {
            "before": _measure(host, threads, names, lambda n: _before(old, ep, cr, n)),
            "after": _measure(host, threads, names, lambda n: _after(new, ep, cr, n, sids[n])),
            "floor": _measure(host, threads, names, None, sids),
        }
        new.close()
    finally:
        host.close()
    results["after"]["fraction_of_floor"] = round(
        results["after"]["lifecycles_per_s"] / results["floor"]["lifecycles_per_s"], 3)
    results["after"]["speedup_over_before"] = round(
        results["after"]["lifecycles_per_s"] / results["before"]["lifecycles_per_s"], 2)
    return {"bench": "host_runs", "cores": os.cpu_count(), "threads": threads, "ps_startup_ms": ps_startup_ms,
            "latency_ms": latency_ms, "results": results}


def _plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, result in report["results"].items():
        ordered = sorted(result["latencies_ms"])
        ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=label)
    ax.set_xlabel("lifecycle latency at the host (ms)")
    ax.set_ylabel("fraction of lifecycles")
    ax.set_title(f"host runs, ps-startup {report['ps_startup_ms']} ms, {report['cores']} cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifecycles", type=int, default=200)
    parser.add_argument("--ps-startup-ms", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    report = run(args.lifecycles, args.ps_startup_ms, args.latency_ms, args.threads)
    summary = {k: {m: v for m, v in r.items() if m != "latencies_ms"} for k, r in report["results"].items()}
    print(json.dumps({**{k: v for k, v in report.items() if k != "results"}, "results": summary}, indent=1))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report) + "\n")
        _plot(report, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
