"""Liveness, the probe server's answers, WinRM call metrics and `$CREDENTIALS_DIRECTORY` in password_file."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from shared import health
from shared.credentials import CredentialError, resolve_password
from shared.health import Check, Liveness
from shared.probes import ProbeServer
from shared.winrm import Credentials, FakeWinRM, HostEndpoint, Metered, RetryableWinRMError


def status_of(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_thread_that_stops_beating_makes_healthz_fail_and_a_stopped_one_does_not() -> None:
    liveness = Liveness()
    sweeper = liveness.heartbeat("sweeper", stale_after=0.05)
    finished = liveness.heartbeat("relay", stale_after=0.05)
    finished.stopped = True
    server = ProbeServer("127.0.0.1", 0, liveness.checks, lambda: [Check("broker", True, "fine")]).start()
    try:
        sweeper.beat()
        assert status_of(server.port, "/healthz")[0] == 200
        threading.Event().wait(0.1)
        status, body = status_of(server.port, "/healthz")
        assert status == 503 and "FAIL sweeper: last beat" in body and "ok relay" in body
        assert status_of(server.port, "/readyz") == (200, "ok broker: fine\n")
        status, body = status_of(server.port, "/metrics")
        assert status == 200 and "# TYPE jit_state_transitions_total counter" in body
    finally:
        server.stop()


def test_a_probe_that_raises_answers_503_instead_of_crashing_the_server() -> None:
    def broken() -> list[Check]:
        raise RuntimeError("boom")

    server = ProbeServer("127.0.0.1", 0, lambda: [], broken).start()
    try:
        status, body = status_of(server.port, "/readyz")
        assert status == 503 and "FAIL readyz: probe failed: RuntimeError: boom" in body
    finally:
        server.stop()


def test_beat_reaches_the_heartbeat_the_thread_owns_and_is_a_no_op_elsewhere() -> None:
    beat = health.Heartbeat("reconciler", stale_after=60)
    beat.last = 0.0
    health.beat()  # this thread owns none: nothing happens
    assert beat.last == 0.0

    def job() -> None:
        health.own(beat)
        health.beat()

    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    assert beat.last > 0.0


def test_metered_winrm_counts_calls_by_operation_and_outcome_and_tracks_in_flight() -> None:
    fake = FakeWinRM()
    port = Metered(fake)
    host, creds = HostEndpoint("10.9.9.9", scheme="http", port=5985), Credentials("svc", "pw")
    before_ok = _count("list_members", "ok")
    before_retryable = _count("list_members", "retryable")
    port.list_members(host, creds, "S-1-5-32-544")
    fake.fail(RetryableWinRMError(host.key, "list_members", "down"), operation="list_members")
    with pytest.raises(RetryableWinRMError):
        port.list_members(host, creds, "S-1-5-32-544")
    assert _count("list_members", "ok") == before_ok + 1
    assert _count("list_members", "retryable") == before_retryable + 1
    assert REGISTRY.get_sample_value("jit_winrm_calls_in_flight", {"host": host.key}) == 0


def _count(operation: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("jit_winrm_call_seconds_count", {"operation": operation, "outcome": outcome})
    return value or 0.0


def test_password_file_under_the_credentials_directory_is_this_process_own(tmp_path: Path) -> None:
    (tmp_path / "corp-admin").write_text("pa55\n")
    for spelled in ("$CREDENTIALS_DIRECTORY/corp-admin", "${CREDENTIALS_DIRECTORY}/corp-admin"):
        assert resolve_password("corp", None, spelled, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "pa55"
    with pytest.raises(CredentialError, match=r"needs CREDENTIALS_DIRECTORY \(set by systemd's LoadCredential="):
        resolve_password("corp", None, "$CREDENTIALS_DIRECTORY/corp-admin", {})
    with pytest.raises(CredentialError, match="cannot read password file"):
        resolve_password("corp", None, "$HOME/corp-admin", {"HOME": str(tmp_path)})  # no other variable expands
