"""The host-runs benchmark at a smoke size (no timing asserted): it runs, and counts what it claims."""

from __future__ import annotations

from bench.host_runs import run


def test_host_runs_bench_smoke() -> None:
    report = run(lifecycles=4, ps_startup_ms=0.0, latency_ms=0.0, threads=2)
    results = report["results"]
    assert results["before"]["powershell_runs_per_lifecycle"] == 4.0
    assert results["after"]["powershell_runs_per_lifecycle"] == 2.0
    assert results["after"]["shells_per_lifecycle"] <= 0.5  # two pooled shells for four lifecycles
    assert results["floor"]["powershell_runs_per_lifecycle"] == 2.0
