"""The expiry benchmarks at a smoke size (no timing asserted): real jit-reaper processes over jit-winrm-sim
processes end every grant, remove every member from the hosts, and the reports count what they claim."""

from __future__ import annotations

import pytest

from bench import expiry_precision, mass_expiry

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]


def test_expiry_precision_smoke(postgres_server_url: str, amqp_run_url: str) -> None:
    report = expiry_precision.run(requests=6, spread=1.0, engine="postgres", server=postgres_server_url,
                                  amqp=amqp_run_url, ps_startup_ms=0.0)
    results = report["results"]
    assert [r["expiry_timers"] for r in results.values()] == [0, 1000]  # before and after, in one run
    for result in results.values():
        # Every window ended and its removal reached the host (run() asserts no member is left).
        assert result["requests"] == 6 and len(result["removal_started_ms"]) == 6
        assert result["ended"]["min_ms"] >= 0  # never ended before its expires_at


def test_mass_expiry_smoke(postgres_server_url: str, amqp_run_url: str) -> None:
    report = mass_expiry.run(grants=8, hosts=2, ps_startup_ms=0.0, replicas=[2], threads=None,
                             server=postgres_server_url, amqp=amqp_run_url, sim_processes=1)
    assert report["grants"] == 8 and report["time_per_revocation_ms"] > 0
    assert [(r["replicas"], r["grants"]) for r in report["results"]] == [(2, 8)]  # two replicas, each grant once
