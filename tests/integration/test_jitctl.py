"""`jitctl` as a process against the real broker and both databases: what an operator types, and its errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import transaction
from shared.db.models import Request
from shared.settings import Settings
from shared.states import State
from tests.conftest import settings_env
from tests.factories import HostSpec, make_request, seed_config
from tests.integration.approval_harness import EventTap

JITCTL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "jitctl")
SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "sample-config.yaml"


def jitctl(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JITCTL, *args], env=settings_env(settings) | env, capture_output=True, text=True,
                          timeout=60, check=False)


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_apply_twice_then_a_refused_file(settings: Settings, tmp_path: Path) -> None:
    first = jitctl(settings, "apply", "-f", str(SAMPLE))
    assert first.returncode == 0 and "created  task jit-web-admins" in first.stdout, first.stderr
    assert jitctl(settings, "apply", "-f", str(SAMPLE)).stdout.strip() == "no changes"
    bad = tmp_path / "bad.yaml"
    bad.write_text(SAMPLE.read_text().replace("checkout_enabled: true", "checkout_enabled: false")
                   .replace("approval_window_seconds: 3600", "approval_window_seconds: 10"))
    refused = jitctl(settings, "apply", "-f", str(bad))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "task jit-web-admins: secret sec-web01-svc does not have checkout enabled" in refused.stderr
    # Refused whole: nothing of it was written, so the good file is still "no changes".
    assert jitctl(settings, "apply", "-f", str(SAMPLE)).stdout.strip() == "no changes"


# Commands that only read one row or only talk to the broker: one database is enough.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
def test_status_of_eligibility(settings: Settings, factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    for user, secret, status, reason in [("alice", "sec-0-0", "NOT_REQUESTED", "requires approval"),
                                         ("victor", "sec-0-0", "NOT_ELIGIBLE", "vendor representative"),
                                         ("alice", "sec-nope", "NOT_ELIGIBLE", "not configured")]:
        answer = as_json(jitctl(settings, "status", "--secret", secret, "--user", user, "--json"))
        assert answer["status"] == status and reason in answer["reason"] and answer["action"]


@sqlite_only
def test_status_follows_requests_and_listings(settings: Settings, factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    pending = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.PENDING, checkout_id="co-p")
    status = as_json(jitctl(settings, "status", "--secret", "sec-0-0", "--user", "alice", "--checkout", "co-p",
                            "--json"))
    assert status == {"status": "PENDING", "action": "Pending Approval",
                      "reason": "a request is waiting for an approver"}
    with transaction(factory) as s:
        row = s.get(Request, pending.id)
        assert row is not None
        row.state = "ELEVATED"
    latest = as_json(jitctl(settings, "status", "--secret", "sec-0-0", "--user", "alice", "--json"))
    assert latest["status"] == "APPROVED"
    listed = as_json(jitctl(settings, "requests", "--json"))
    assert {"request_id", "state", "secret_id", "checkout_id", "requester_id", "approver_id", "expires_at"} <= set(
        listed[0])
    assert as_json(jitctl(settings, "requests", "--state", "pending", "--json")) == []
    table = jitctl(settings, "requests")
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("REQUEST_ID")
    assert pending.id in table.stdout
    assert jitctl(settings, "audit", "--request", "nope").returncode == 1


@sqlite_only
def test_approve_deny_and_publish_go_through_the_broker(settings: Settings, factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    one = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.PENDING, id="req-1")
    two = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.PENDING, id="req-2")
    tap = EventTap(settings)
    try:
        assert jitctl(settings, "approve", one.id, "--as", "bob").returncode == 0
        assert jitctl(settings, "deny", two.id, "--as", "carol", "--reason", "no ticket").returncode == 0
        data = json.dumps({"checkout_id": "co-1", "secret_id": "sec-0-0", "reason": "manual"})
        assert jitctl(settings, "publish", "secret.checked_in", "--data", data).returncode == 0
        seen = tap.wait_for("elevation.decided", count=2)
        assert {(e["data"]["request_id"], e["data"]["decision"], e["source"]) for e in seen} == {
            ("req-1", "approve", "jitctl"), ("req-2", "deny", "jitctl")}
        assert tap.wait_for("secret.checked_in")[0]["data"]["checkout_id"] == "co-1"
    finally:
        tap.close()


@sqlite_only
def test_errors_are_clear_and_without_traceback(settings: Settings, tmp_path: Path) -> None:
    bad_data = jitctl(settings, "publish", "elevation.decided", "--data", '{"request_id": "r", "decision": "maybe"}')
    assert bad_data.returncode == 2 and "approver_id: Field required" in bad_data.stderr
    assert "decision: Input should be 'approve' or 'deny'" in bad_data.stderr
    not_json = jitctl(settings, "publish", "elevation.decided", "--data", "{oops")
    assert not_json.returncode == 2 and "--data is not JSON" in not_json.stderr
    checked_in = '{"checkout_id": "c", "secret_id": "s", "reason": "manual"}'
    down = jitctl(settings, "publish", "secret.checked_in", "--data", checked_in,
                  JIT_AMQP_URL="amqp://guest:s3cret@127.0.0.1:1/%2F")
    assert down.returncode == 1 and "127.0.0.1:1" in down.stderr and "rabbitmq-server" in down.stderr
    assert "s3cret" not in down.stderr and "Traceback" not in down.stderr
    fresh = f"sqlite:///{tmp_path / 'empty.db'}"
    empty = jitctl(settings, "requests", JIT_DATABASE_URL=fresh)
    assert empty.returncode == 1 and "run `jitctl db upgrade`" in empty.stderr and "Traceback" not in empty.stderr
    assert jitctl(settings, "db", "upgrade", JIT_DATABASE_URL=fresh).returncode == 0
    assert jitctl(settings, "requests", "--json", JIT_DATABASE_URL=fresh).stdout.strip() == "[]"


def test_audit_shows_transitions(settings: Settings, factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    assert jitctl(settings, "apply", "-f", str(SAMPLE), "--prune").returncode == 0
    entries = as_json(jitctl(settings, "audit", "--json"))
    assert entries[0]["action"] == "config.applied" and entries[0]["actor"] == "jitctl apply"  # newest first
    assert "created" in entries[0]["details"]
