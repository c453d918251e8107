"""Memory of the daemons: each one's RSS after a warm-up burst and after 10,000 lifecycles (issue 14).

Starts the real stack (`bench.stack`: one simulated host, one process of each daemon, PostgreSQL and a
vhost of its own), plays a warm-up burst, samples each daemon (`bench.procstats`: RSS, open fds, its
database sessions, the outbox backlog), then plays the lifecycles in bursts of `--chunk` (a burst of
10,000 at once would put 50 lifecycles of one account in flight together) and samples after each burst.
Goal: RSS growth under 5% from the end of the warm-up to the end.

    .venv/bin/python -m bench.memory [--lifecycles 10000] [--warmup 200] [--chunk 200] \\
        [--ps-startup-ms 0] [--out bench/results/memory.json]

Writes JSON (every sample) and, when matplotlib is installed, a PNG of RSS against lifecycles beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.plots import save
from bench.procstats import Sample, Sampler, growth
from bench.stack import DAEMONS, Lifecycle, Stack, drive, stop_on_sigterm

GOAL_PERCENT = 5.0
SETTLE_SECONDS = 2.0  # after a burst, let the relays and periodic jobs go idle before sampling


def _ended(lifecycles: list[Lifecycle]) -> dict[str, int]:
    return {kind: sum(kind in lc.times for lc in lifecycles) for kind in ("elevated", "revoked", "failed")}


def _burst(stack: Stack, sampler: Sampler, count: int, totals: dict[str, int]) -> Sample:
    for kind, n in _ended(drive(stack, count)).items():
        totals[kind] = totals.get(kind, 0) + n
    time.sleep(SETTLE_SECONDS)
    return sampler.sample()


def run(lifecycles: int, warmup: int, chunk: int, ps_startup_ms: float, folder: Path) -> dict[str, Any]:
    with Stack(folder, secrets=chunk, ps_startup_ms=ps_startup_ms) as stack:
        assert stack.settings is not None
        sampler = Sampler({d: stack.pids[d] for d in DAEMONS}, stack.settings.database_url)
        try:
            started = sampler.sample()
            warm_totals: dict[str, int] = {}
            warm = _burst(stack, sampler, warmup, warm_totals)
            totals: dict[str, int] = {}
            series = [(0, warm)]
            done = 0
            while done < lifecycles:
                n = min(chunk, lifecycles - done)
                done += n
                series.append((done, _burst(stack, sampler, n, totals)))
        finally:
            sampler.close()
    end = series[-1][1]
    daemons: dict[str, dict[str, dict[str, Any]]] = {
        d: {"rss_kb": {"start": started.rss_kb[d], "after_warmup": warm.rss_kb[d], "end": end.rss_kb[d],
                       "growth_pct": growth(warm.rss_kb[d], end.rss_kb[d])},
            "fds": {"after_warmup": warm.fds[d], "end": end.fds[d]},
            "db_connections": {"after_warmup": (warm.db_connections or {}).get(d),
                               "end": (end.db_connections or {}).get(d)}}
        for d in DAEMONS}
    worst = max(v["rss_kb"]["growth_pct"] or 0.0 for v in daemons.values())
    return {"bench": "memory", "cores": os.cpu_count(), "lifecycles": lifecycles, "warmup": warmup, "chunk": chunk,
            "ps_startup_ms": ps_startup_ms, "ended_in_warmup": warm_totals, "ended": totals,
            "daemons": daemons, "worst_rss_growth_pct": worst, "goal_pct": GOAL_PERCENT, "ok": worst < GOAL_PERCENT,
            "samples": [{"lifecycles": n, **s.as_json()} for n, s in series]}


def _plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    samples = report["samples"]
    for daemon in DAEMONS:
        base = samples[0]["rss_kb"][daemon]
        ax.plot([s["lifecycles"] for s in samples], [100 * (s["rss_kb"][daemon] - base) / base for s in samples],
                label=f"{daemon} ({base / 1024:.0f} MiB after the warm-up)")
    ax.axhline(report["goal_pct"], color="red", linewidth=0.8, linestyle="--", label="goal")
    ax.set_xlabel("lifecycles after the warm-up burst")
    ax.set_ylabel("RSS growth since the warm-up (%)")
    ax.set_title(f"daemon RSS, worst growth {report['worst_rss_growth_pct']}%, {report['cores']} cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifecycles", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--ps-startup-ms", type=float, default=0.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="jit-bench-memory-") as folder:
        report = run(args.lifecycles, args.warmup, args.chunk, args.ps_startup_ms, Path(folder))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    save(report, args.out, lambda png: _plot(report, png))


if __name__ == "__main__":
    main()
