"""`jitctl demo` with JIT_METRICS_PORT: each daemon process serves /metrics, and the counters tell the four stories."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_demo import demo_env

pytestmark = pytest.mark.slow
JITCTL = str(Path(sys.executable).with_name("jitctl"))


def free_ports(count: int) -> int:
    """A base port such that it and the next `count - 1` are free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            sockets = [socket.create_server(("0.0.0.0", base + i)) for i in range(count)]  # noqa: S104 - as the daemons
        except OSError:
            continue
        for s in sockets:
            s.close()
        return base
    raise RuntimeError("no free consecutive ports")


def totals(text: str) -> Counter[tuple[str, frozenset[tuple[str, str]]]]:
    found: Counter[tuple[str, frozenset[tuple[str, str]]]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] += sample.value
    return found


def test_the_demo_daemons_export_what_the_stories_did(tmp_path: Path, amqp_run_url: str) -> None:
    env = {**demo_env(amqp_run_url), "JIT_METRICS_PORT": str(free_ports(3))}
    done = subprocess.run([JITCTL, "demo", "--keep"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240, check=False)
    kept = re.search(r"^kept (\S+) ", done.stdout, re.M)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert kept
        folder = Path(kept.group(1))
        per_daemon = {d: totals((folder / f"{d}.metrics").read_text()) for d in ("approval", "elevator", "reaper")}
    finally:
        if kept:
            shutil.rmtree(kept.group(1), ignore_errors=True)
    every: Counter[tuple[str, frozenset[tuple[str, str]]]] = Counter()
    for found in per_daemon.values():
        every.update(found)

    def transitions(source: str, target: str) -> float:
        return every[("jit_state_transitions_total", frozenset({("from_state", source), ("to_state", target)}))]

    assert transitions("NEW", "PENDING") == 4
    assert transitions("PENDING", "APPROVED") == 3 and transitions("PENDING", "DENIED") == 1
    assert transitions("ELEVATING", "ELEVATED") == 3
    assert transitions("REVOKING", "REVOKED") == 3

    elevator, reaper = per_daemon["elevator"], per_daemon["reaper"]
    add_ok = ("jit_winrm_call_seconds_count", frozenset({("operation", "add_member"), ("outcome", "ok")}))
    assert elevator[add_ok] == 3
    # A revocation is one `revoke` run (remove, verify, sessions); `remove_member` is the reconciler's.
    remove = {outcome: sum(reaper.get(("jit_winrm_call_seconds_count",
                                       frozenset({("operation", op), ("outcome", outcome)})), 0.0)
                           for op in ("revoke", "remove_member"))
              for outcome in ("ok", "retryable")}
    assert remove["ok"] >= 3 and remove["retryable"] >= 1, f"story 4's host was down: {remove}"
    checked_in = ("jit_events_consumed_total", frozenset({("type", "secret.checked_in"), ("outcome", "ack")}))
    assert reaper[checked_in] >= 2
    for daemon, found in per_daemon.items():
        assert any(name == "jit_revocations_pending" for name, _ in found), daemon
        for name, labels in found:
            assert not any(key in ("request_id", "checkout_id") for key, _ in labels), f"{daemon} {name}"
