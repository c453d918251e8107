"""The soak: the real stack at a steady rate for 30 minutes; what the daemons hold must stay flat (issue 12).

Starts the stack of `bench.stack` (one simulated host, one process of each daemon, PostgreSQL and a vhost of
its own), drives lifecycles at `--rate` per second for `--minutes`, and samples every `--interval` seconds
(`bench.procstats`): each daemon's RSS, open file descriptors and PostgreSQL sessions, and the outbox
backlog. Not part of CI (half an hour):

    .venv/bin/python -m bench.soak [--minutes 30] [--rate 5] [--warmup-minutes 3] [--interval 10] \\
        [--out bench/results/soak.json]

`soak.json` (read by the reliability report):

    {"bench": "soak", "date": ISO-8601 UTC, "cores": int, "minutes": float, "rate": float,
     "warmup_minutes": float, "interval": float, "goal_pct": 5.0, "ok": bool,
     "lifecycles": {"requested": int, "elevated": int, "revoked": int, "failed": int, "unfinished": int,
                    "request_to_elevated_ms": {"p50", "p99", "max"}, "checkin_to_revoked_ms": {...}},
     "daemons": {"approval" | "elevator" | "reaper": {
         "rss_kb" | "fds" | "db_connections": {"start": n, "end": n, "start_mean": x, "end_mean": x, "max": n,
                                               "growth_pct": float | null, "ok": bool}}},
     "outbox_backlog": {"start": n, "end": n, "start_mean": x, "end_mean": x, "max": n,
                        "growth_pct": float | null, "ok": bool},
     "sampling_errors": [str],
     "samples": [{"at": seconds, "rss_kb": {daemon: kB}, "fds": {daemon: n}, "db_connections": {daemon: n},
                  "outbox_backlog": n}]}

`start` is the median sample of the window (`WINDOW_SECONDS`) right after the warm-up, `end` the median of
the last window under load: a leak moves it, a burst of work in flight at one sample does not (`*_mean` are
the windows' means, `max` the largest sample after the warm-up; `growth_pct` is end against start, null when
start is 0). RSS is ok under 5% growth. File descriptors and database
sessions are small integers held in bounded pools (WinRM connections, the SQLAlchemy pool): ok under 5%
growth or when they grew by at most one. The backlog is work in flight: ok when it grew less than 5% or
stays within one second of lifecycles (`rate` rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.plots import save
from bench.procstats import Sample, Sampler, growth
from bench.stack import DAEMONS, Lifecycle, Stack, drive, stop_on_sigterm

GOAL_PERCENT = 5.0
WINDOW_SECONDS = 120.0
SECRETS = 500  # an account is granted again only ~100 s later at 5/s: lifecycles of one account never overlap


class Recorder(threading.Thread):
    """Samples every `interval` seconds until stopped; `samples` grows as it goes."""

    def __init__(self, sampler: Sampler, interval: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.sampler, self.interval = sampler, interval
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.samples.append(self.sampler.sample())
            except Exception as exc:  # a daemon gone or the database away: a gap in the series, reported
                self.errors.append(repr(exc))
            if self.stopping.wait(self.interval):
                return


def _figure(after: list[Sample], kind: str, daemon: str | None, rate: float) -> dict[str, Any]:
    values = [getattr(s, kind) if daemon is None else getattr(s, kind)[daemon] for s in after]
    window = sum(1 for s in after if s.at - after[0].at < WINDOW_SECONDS)
    first, last = values[:window], values[-window:]
    start, end = statistics.median_low(first), statistics.median_low(last)
    below_goal = end < start * (1 + GOAL_PERCENT / 100)
    if kind == "rss_kb":
        ok = below_goal
    elif kind == "outbox_backlog":
        ok = below_goal or end <= rate
    else:
        ok = below_goal or end - start <= 1
    return {"start": start, "end": end, "start_mean": round(statistics.fmean(first), 1),
            "end_mean": round(statistics.fmean(last), 1), "max": max(values), "growth_pct": growth(start, end),
            "ok": ok}


def summarise(samples: list[Sample], warmup_seconds: float, rate: float) -> dict[str, Any]:
    """Figures from the end of the warm-up to the end of the load (see the module docstring)."""
    after = [s for s in samples if s.at >= warmup_seconds] or samples[-1:]
    kinds = ("rss_kb", "fds") if after[0].db_connections is None else ("rss_kb", "fds", "db_connections")
    daemons = {d: {kind: _figure(after, kind, d, rate) for kind in kinds} for d in after[0].rss_kb}
    backlog = _figure(after, "outbox_backlog", None, rate)
    ok = backlog["ok"] and all(f["ok"] for figures in daemons.values() for f in figures.values())
    return {"ok": ok, "daemons": daemons, "outbox_backlog": backlog}


def _latency(lifecycles: list[Lifecycle], start: str, end: str) -> dict[str, float] | None:
    spans = sorted(s for lc in lifecycles if (s := lc.span(start, end)) is not None)
    if not spans:
        return None
    return {"p50": round(1000 * statistics.median(spans), 1),
            "p99": round(1000 * spans[min(len(spans) - 1, int(0.99 * len(spans)))], 1),
            "max": round(1000 * spans[-1], 1)}


def run(minutes: float, rate: float, warmup_minutes: float, interval: float, folder: Path) -> dict[str, Any]:
    count = int(minutes * 60 * rate)
    with Stack(folder, secrets=SECRETS) as stack:
        assert stack.settings is not None
        sampler = Sampler({d: stack.pids[d] for d in DAEMONS}, stack.settings.database_url)
        recorder = Recorder(sampler, interval)
        recorder.start()
        try:
            lifecycles = drive(stack, count, rate=rate)
        finally:
            recorder.stopping.set()
            recorder.join(60)
            sampler.close()
    under_load = [s for s in recorder.samples if s.at <= minutes * 60 + interval]
    ended = {kind: sum(kind in lc.times for lc in lifecycles) for kind in ("elevated", "revoked", "failed")}
    unfinished = sum(not ({"revoked", "failed", "denied"} & lc.times.keys()) for lc in lifecycles)
    return {"bench": "soak", "date": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
            "minutes": minutes, "rate": rate, "warmup_minutes": warmup_minutes, "interval": interval,
            "goal_pct": GOAL_PERCENT, **summarise(under_load, warmup_minutes * 60, rate),
            "lifecycles": {"requested": count, **ended, "unfinished": unfinished,
                           "request_to_elevated_ms": _latency(lifecycles, "requested", "elevated"),
                           "checkin_to_revoked_ms": _latency(lifecycles, "checked_in", "revoked")},
            "sampling_errors": recorder.errors, "samples": [s.as_json() for s in recorder.samples]}


def _plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    samples = report["samples"]
    minutes = [s["at"] / 60 for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    panels = (("rss_kb", "RSS (MiB)", 1024), ("fds", "open file descriptors", 1),
              ("db_connections", "PostgreSQL sessions", 1))
    for ax, (kind, label, scale) in zip(axes.flat, panels, strict=False):
        for daemon in DAEMONS:
            ax.plot(minutes, [(s[kind] or {}).get(daemon, 0) / scale for s in samples], label=daemon)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    axes.flat[3].plot(minutes, [s["outbox_backlog"] for s in samples], color="grey")
    axes.flat[3].set_ylabel("outbox backlog (rows)")
    for ax in axes.flat:
        ax.axvline(report["warmup_minutes"], color="black", linewidth=0.5, linestyle=":")
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    axes.flat[0].legend()
    fig.suptitle(f"soak: {report['rate']} lifecycles/s for {report['minutes']} min, {report['cores']} cores "
                 f"({'flat' if report['ok'] else 'NOT flat'})")
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--warmup-minutes", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="jit-bench-soak-") as folder:
        report = run(args.minutes, args.rate, args.warmup_minutes, args.interval, Path(folder))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    save(report, args.out, lambda png: _plot(report, png))


if __name__ == "__main__":
    main()
