"""bench.soak's verdict: a series that keeps growing is flagged, work in flight and pools at rest are not."""

from __future__ import annotations

from bench.procstats import Sample
from bench.soak import summarise


def _series(rss: list[int], fds: list[int], backlog: list[int]) -> list[Sample]:
    return [Sample(at=10.0 * i, rss_kb={"reaper": r}, fds={"reaper": f}, db_connections={"reaper": 5},
                   outbox_backlog=b) for i, (r, f, b) in enumerate(zip(rss, fds, backlog, strict=True))]


def test_flat_series_with_bursts_of_work_is_ok() -> None:
    n = 60
    samples = _series([100_000 + (i % 3) * 3_000 for i in range(n)], [20 + (i % 4) for i in range(n)],
                      [(i % 4) * 3 for i in range(n)])
    verdict = summarise(samples, warmup_seconds=0.0, rate=5.0)
    assert verdict["ok"]
    assert verdict["daemons"]["reaper"]["rss_kb"]["growth_pct"] == 0.0


def test_growing_rss_fds_and_backlog_are_flagged() -> None:
    n = 60
    samples = _series([100_000 + 200 * i for i in range(n)], [20 + i // 5 for i in range(n)], [i for i in range(n)])
    verdict = summarise(samples, warmup_seconds=0.0, rate=5.0)
    figures = verdict["daemons"]["reaper"]
    assert not verdict["ok"]
    assert not figures["rss_kb"]["ok"] and figures["rss_kb"]["growth_pct"] > 5
    assert not figures["fds"]["ok"]
    assert figures["db_connections"]["ok"]
    assert not verdict["outbox_backlog"]["ok"]


def test_the_warm_up_is_left_out() -> None:
    n = 60
    samples = _series([50_000 if i < 20 else 100_000 for i in range(n)], [20] * n, [0] * n)
    assert summarise(samples, warmup_seconds=200.0, rate=5.0)["ok"]
    assert not summarise(samples, warmup_seconds=0.0, rate=5.0)["ok"]
