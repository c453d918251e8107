"""The burst, steady and relay benchmarks at a smoke size (no timing asserted): each runs end to end on the real stack,
every lifecycle ends REVOKED, the simulator counts the runs, and the floor the burst compares with is measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import burst, relay, steady

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]


def test_burst_smoke(tmp_path: Path) -> None:
    report = burst.run(3, 0.0, 0.0, tmp_path, None)
    for phase, runs in (("first_grants", 3.0), ("known_accounts", 2.0)):
        result = report["results"]["now"][phase]
        assert result["outcomes"] == {"revoked": 3, "failed": 0, "denied": 0, "open": 0}
        assert result["powershell_runs_per_lifecycle"] == pytest.approx(runs, abs=0.34)  # + a reconciler listing
        assert result["floor"]["runs"] >= 3 * runs and result["floor"]["lifecycles_per_s"] > 0
        assert result["request_to_elevated"]["n"] == 3 and result["checkin_to_revoked"]["n"] == 3


def test_steady_smoke(tmp_path: Path) -> None:
    report = steady.run(2.0, 2.0, 3, [0.0], tmp_path, settle=0.0, per_host=3, elevators=2)
    result = report["results"]["0ms"]
    assert result["outcomes"] == {"revoked": 4, "failed": 0, "denied": 0, "open": 0}
    assert result["lease_waits"] == 0 and result["scripts"].get("elevate_known") == 4
    assert result["operation_ms"]["elevate_known"]["n"] > 0
    assert report["per_host_concurrency"] == 3 and report["elevators"] == 2
    assert len(report["latencies"]["ps-startup 0 ms"]["request_to_elevated_ms"]) == 4


def test_relay_smoke() -> None:
    """bench.relay against this very tree as `--before`: both sides publish every event once (asserted inside)."""
    report = relay.run(str(Path(__file__).resolve().parents[2]), 10, 1)
    assert set(report["results"]) == {"now 1", "before 1", "now 5", "before 5"}
    assert all(r["cpu_ms_per_event"] > 0 for r in report["results"].values())
