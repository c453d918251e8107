"""`jitctl apply` as a process on both databases: a file that removes what an elevated request depends on is
refused naming the request, and `--end-active` applies it, leaving the request REVOKING with its audit row."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import transaction
from shared.db.models import AuditEntry, Request, Secret
from shared.settings import Settings
from shared.states import State
from tests.conftest import settings_env

JITCTL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "jitctl")
SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "sample-config.yaml"


def jitctl(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JITCTL, *args], env=settings_env(settings), capture_output=True, text=True, timeout=60,
                          check=False)


def elevated_request(factory: sessionmaker[Session]) -> str:
    now = datetime.now(UTC)
    with transaction(factory) as s:
        s.add(Request(id="req-cfg-1", checkout_id="co-cfg-1", secret_id="sec-web01-svc", requester_id="alice",
                      host="web01.corp.example", justification="patch", state=State.ELEVATED.value,
                      task_id="jit-web-admins", account="svc-app", group="S-1-5-32-544", approver_id="bob",
                      requested_at=now, checkout_expires_at=now + timedelta(hours=1), decided_at=now,
                      expires_at=now + timedelta(hours=1), elevated_at=now, pre_existing=False, failed=False,
                      attempts=0, updated_at=now))
    return "req-cfg-1"


def test_apply_is_refused_naming_the_request_then_end_active_revokes_it(
        settings: Settings, factory: sessionmaker[Session], tmp_path: Path) -> None:
    assert jitctl(settings, "apply", "-f", str(SAMPLE)).returncode == 0
    rid = elevated_request(factory)
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["secrets"], doc["tasks"][0]["secrets"] = [], []
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(yaml.safe_dump(doc))

    refused = jitctl(settings, "apply", "-f", str(smaller), "--prune")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and refused.stdout == ""
    assert (f"request {rid} (ELEVATED, host web01.corp.example, secret sec-web01-svc): "
            "secret sec-web01-svc is removed") in refused.stderr
    assert "nothing was changed" in refused.stderr and "--end-active" in refused.stderr
    with factory() as s:
        assert s.get(Request, rid).state == "ELEVATED"  # type: ignore[union-attr]
        assert s.get(Secret, "sec-web01-svc") is not None

    ended = jitctl(settings, "apply", "-f", str(smaller), "--prune", "--end-active", "--json")
    assert ended.returncode == 0, ended.stderr
    summary = json.loads(ended.stdout)
    assert summary["changed"] and "secret sec-web01-svc" in summary["removed"]
    assert [e.split(":")[0] for e in summary["ended_requests"]] == [f"request {rid} (ELEVATED -> REVOKING)"]
    with factory() as s:
        row = s.get(Request, rid)
        assert row is not None and (row.state, row.end_trigger) == ("REVOKING", "config_removed")
        entry = s.scalars(select(AuditEntry).where(AuditEntry.request_id == rid).order_by(AuditEntry.id.desc())).first()
        assert entry is not None
        assert (entry.action, entry.actor, entry.from_state, entry.to_state) == ("end", "jitctl apply", "ELEVATED",
                                                                                 "REVOKING")
        assert "secret sec-web01-svc is removed" in (entry.reason or "")
    audit = json.loads(jitctl(settings, "audit", "--request", rid, "--json").stdout)
    assert audit[0]["to_state"] == "REVOKING" and audit[0]["actor"] == "jitctl apply"  # newest first
    again = jitctl(settings, "apply", "-f", str(smaller))
    assert again.returncode == 0 and again.stdout.strip() == "no changes"
