"""Issue 16, as an operator meets it: `jitctl` (and the daemons' and simulator's command lines) run as processes
against the real broker and both databases: planned applies, decisions checked before they leave, listings that
page, and the conventions (--version, --json, exit codes, completion)."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import transaction
from shared.db.models import AuditEntry, Request, User
from shared.settings import Settings
from shared.states import State
from tests.conftest import settings_env
from tests.factories import HostSpec, make_request, seed_config
from tests.integration.approval_harness import EventTap, approval_running

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "sample-config.yaml"
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def jitctl(settings: Settings, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "jitctl"), *args], env=settings_env(settings) | env, capture_output=True,
                          text=True, timeout=120, check=False, input=stdin)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def elevated(factory: sessionmaker[Session]) -> str:
    now = datetime.now(UTC)
    with transaction(factory) as s:
        s.add(Request(id="req-op-1", checkout_id="co-op-1", secret_id="sec-web01-svc", requester_id="alice",
                      host="web01.corp.example", justification="patch", state=State.ELEVATED.value,
                      task_id="jit-web-admins", account="svc-app", group="S-1-5-32-544", approver_id="bob",
                      requested_at=now, checkout_expires_at=now + timedelta(hours=1), decided_at=now,
                      expires_at=now + timedelta(hours=1), elevated_at=now, pre_existing=False, failed=False,
                      attempts=0, updated_at=now))
    return "req-op-1"


def counts(factory: sessionmaker[Session]) -> tuple[int, int, str]:
    with factory() as s:
        request = s.get(Request, "req-op-1")
        return (s.scalar(select(func.count()).select_from(User)) or 0,
                s.scalar(select(func.count()).select_from(AuditEntry)) or 0, request.state if request else "-")


# 1. apply is planned, never surprising


def test_apply_needs_prune_to_remove_and_dry_run_lists_what_would_end(
        settings: Settings, factory: sessionmaker[Session], tmp_path: Path) -> None:
    ok(jitctl(settings, "apply", "-f", str(SAMPLE)))
    rid = elevated(factory)
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["users"] = [u for u in doc["users"] if u["id"] != "victor"]
    doc["secrets"], doc["tasks"][0]["secrets"] = [], []
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(yaml.safe_dump(doc))
    before = counts(factory)

    plan = jitctl(settings, "apply", "-f", str(smaller), "--dry-run")
    assert plan.returncode == 2 and "Traceback" not in plan.stderr
    assert "would remove  user victor  (needs --prune)" in plan.stdout
    assert "would remove  secret sec-web01-svc  (needs --prune)" in plan.stdout
    assert f"would end     request {rid} (ELEVATED -> REVOKING)" in plan.stdout
    assert plan.stdout.rstrip().endswith("(needs --end-active)")
    assert "needs --prune (2 removal(s)) and --end-active (1 active request(s))" in plan.stderr
    diff = json.loads(ok(jitctl(settings, "diff", "-f", str(smaller), "--json")))
    assert diff["dry_run"] and diff["needs_end_active"] == [rid] and "user victor" in diff["removed"]
    assert ok(jitctl(settings, "apply", "-f", str(smaller), "--dry-run", "--prune", "--end-active")).count("would") > 2
    assert counts(factory) == before  # the plans changed nothing, not even the audit trail

    no_prune = jitctl(settings, "apply", "-f", str(smaller), "--end-active")
    assert no_prune.returncode == 2 and "--prune" in no_prune.stderr and "user victor" in no_prune.stderr
    assert counts(factory) == before
    no_end = jitctl(settings, "apply", "-f", str(smaller), "--prune")
    assert no_end.returncode == 2 and f"request {rid} (ELEVATED" in no_end.stderr and "--end-active" in no_end.stderr
    assert counts(factory) == before

    done = ok(jitctl(settings, "apply", "-f", str(smaller), "--prune", "--end-active"))
    assert "removed  user victor" in done and f"ended    request {rid}" in done
    assert counts(factory)[0] == before[0] - 1 and counts(factory)[2] == "REVOKING"


@sqlite_only
def test_apply_reads_standard_input_and_refuses_empty_and_duplicate_keys(
        settings: Settings, factory: sessionmaker[Session], tmp_path: Path) -> None:
    assert "created  task jit-web-admins" in ok(jitctl(settings, "apply", "-f", "-", stdin=SAMPLE.read_text()))
    before = counts(factory)
    comments = tmp_path / "comments.yaml"
    comments.write_text("# nothing yet\n\n")
    for path, stdin in [("/dev/null", None), (str(comments), None), ("-", ""), ("-", "{}\n")]:
        refused = jitctl(settings, "apply", "-f", path, "--prune", stdin=stdin)
        assert refused.returncode == 2 and "the file is empty" in refused.stderr, (path, refused.stderr)
    appended = jitctl(settings, "apply", "-f", "-", "--prune", stdin=SAMPLE.read_text() + "\nusers: []\n")
    assert appended.returncode == 2 and "key 'users' appears twice in one mapping" in appended.stderr
    assert counts(factory) == before  # `users: []` appended removed nobody


@sqlite_only
def test_a_large_file_reports_progress(settings: Settings, tmp_path: Path) -> None:
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["users"] += [{"id": f"user-{i}", "kind": "internal", "permissions": ["LOGIN_TO_WEB_UI"]} for i in range(1500)]
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump(doc))
    done = jitctl(settings, "apply", "-f", str(big))
    ok(done)
    lines = done.stderr.splitlines()
    assert lines[0].startswith("jitctl apply: ") and "big.yaml: 1507 items, valid" in lines[0]
    assert any("users 1503/1503" in line for line in lines) and lines[-1].startswith("jitctl apply: committing")


# 3. decisions are checked before they leave


@sqlite_only
def test_decisions_are_checked_before_they_leave(settings: Settings, factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    pending = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.PENDING)
    active = make_request(factory, secret_id="sec-0-1", host="127.0.0.1", state=State.ELEVATED)
    tap = EventTap(settings)
    try:
        for args, code, message in [
            (("approve", "req-nope", "--as", "bob"), 1, "no request 'req-nope'"),
            (("approve", active.id, "--as", "bob"), 1, f"request {active.id} is ELEVATED: only a PENDING"),
            (("approve", pending.id, "--as", "victor"), 1, "victor may not decide"),
            (("approve", pending.id, "--as", "alice"), 1, "alice may not decide"),
            (("deny", pending.id, "--as", "bob", "--reason", "  "), 2, "--reason must say why"),
            (("revoke", "req-nope", "--as", "bob", "--reason", "x"), 1, "no request 'req-nope'"),
            (("revoke", active.id, "--as", "bob", "--reason", ""), 2, "--reason must say why"),
        ]:
            done = jitctl(settings, *args)
            assert done.returncode == code and message in done.stderr, (args, done.stderr)
            assert len(done.stderr.splitlines()) == 1 and done.stdout == ""
        assert tap.drain() == []  # nothing was published
        late = jitctl(settings, "approve", pending.id, "--as", "bob", "--wait", "1", "--json")
        assert late.returncode == 4, late.stderr  # no jit-approval running: no outcome in time
        assert json.loads(late.stdout)["outcome"] == "timeout"
    finally:
        tap.close()


@sqlite_only
def test_wait_follows_the_outcome_from_the_running_approval_daemon(
        settings: Settings, factory: sessionmaker[Session]) -> None:
    seed_config(factory, [HostSpec("127.0.0.1", 5985)])
    first = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.PENDING)
    second = make_request(factory, secret_id="sec-0-1", host="127.0.0.1", state=State.PENDING)
    with approval_running(settings):
        approved = json.loads(ok(jitctl(settings, "approve", first.id, "--as", "bob", "--wait", "20", "--json")))
        assert approved["outcome"] == "approved" and approved["request_id"] == first.id
        denied = jitctl(settings, "deny", second.id, "--as", "carol", "--reason", "no ticket", "--wait")
        assert ok(denied).splitlines()[-1] == f"{second.id}: denied (no ticket)"
    with factory() as s:
        assert [s.get(Request, r.id).state for r in (first, second)] == ["APPROVED", "DENIED"]  # type: ignore


# 4. listing that scales


def many(factory: sessionmaker[Session], n: int) -> list[str]:
    start = datetime.now(UTC) - timedelta(hours=n)
    with transaction(factory) as s:
        for i in range(n):
            at = start + timedelta(hours=i)
            s.add(Request(id=f"req-{i:04d}", checkout_id=f"co-{i}", secret_id="sec-0-0" if i % 2 else "sec-0-1",
                          requester_id="alice" if i % 3 else "carol", host="127.0.0.1", justification="j",
                          state="REVOKED" if i % 5 else "PENDING", task_id="task", account="a", group="g",
                          requested_at=at, checkout_expires_at=at + timedelta(hours=1), pre_existing=False,
                          failed=False, attempts=0, updated_at=at, reason="x" * 200))
    return [f"req-{i:04d}" for i in reversed(range(n))]  # newest first


def test_requests_page_newest_first_with_a_cursor_and_filters(
        settings: Settings, factory: sessionmaker[Session]) -> None:
    newest_first = many(factory, 250)
    first = jitctl(settings, "requests", "--jsonl")
    page = [json.loads(line)["request_id"] for line in ok(first).splitlines()]
    assert page == newest_first[:100]
    assert f"--cursor {page[-1]}" in first.stderr
    second = json.loads(ok(jitctl(settings, "requests", "--json", "--cursor", page[-1], "--limit", "200")))
    assert [r["request_id"] for r in second] == newest_first[100:]
    everything = json.loads(ok(jitctl(settings, "requests", "--json", "--limit", "0")))
    assert len(everything) == 250
    pending = json.loads(ok(jitctl(settings, "requests", "--json", "--state", "pending", "--user", "carol",
                                   "--secret", "sec-0-1", "--limit", "0")))
    assert [r["request_id"] for r in pending] == [r for r in newest_first if int(r[4:]) % 30 == 0]
    recent = json.loads(ok(jitctl(settings, "requests", "--json", "--since", "10h")))
    assert len(recent) in (9, 10) and recent[0]["request_id"] == newest_first[0]
    window = json.loads(ok(jitctl(settings, "requests", "--json", "--until", "240h", "--since", "242h")))
    assert len(window) == 2
    bad = jitctl(settings, "requests", "--cursor", "req-nope")
    assert bad.returncode == 2 and "no such request" in bad.stderr


@sqlite_only
def test_human_listing_fits_the_terminal_and_shows_relative_times(
        settings: Settings, factory: sessionmaker[Session]) -> None:
    many(factory, 5)
    table = ok(jitctl(settings, "requests", COLUMNS="100"))
    assert all(len(line) <= 100 for line in table.splitlines())
    assert table.splitlines()[0].startswith("REQUEST_ID") and " h ago)" in table
    audit = ok(jitctl(settings, "audit", "--limit", "1", COLUMNS="80"))
    assert all(len(line) <= 80 for line in audit.splitlines())


@sqlite_only
def test_audit_filters_and_pages(settings: Settings, factory: sessionmaker[Session]) -> None:
    ok(jitctl(settings, "apply", "-f", str(SAMPLE)))
    rid = elevated(factory)
    with transaction(factory) as s:
        for i in range(30):
            s.add(AuditEntry(at=datetime.now(UTC), request_id=rid, action="end", actor=f"op-{i % 2}", reason=str(i)))
    mine = json.loads(ok(jitctl(settings, "audit", "--actor", "op-1", "--json", "--limit", "10")))
    assert [e["reason"] for e in mine] == [str(i) for i in range(29, 9, -2)]
    rest = json.loads(ok(jitctl(settings, "audit", "--actor", "op-1", "--json", "--cursor", str(mine[-1]["id"]))))
    assert [e["reason"] for e in rest] == [str(i) for i in range(9, 0, -2)]
    assert len(json.loads(ok(jitctl(settings, "audit", "--user", "alice", "--json", "--limit", "0")))) == 30
    assert json.loads(ok(jitctl(settings, "audit", "--action", "config.applied", "--json")))[0]["actor"] == \
        "jitctl apply"


# 5. the conventions


@sqlite_only
def test_versions_exit_codes_completion_and_schema_checks(settings: Settings, tmp_path: Path) -> None:
    for tool in ("jitctl", "jit-approval", "jit-elevator", "jit-reaper", "jit-winrm-sim"):
        done = subprocess.run([str(BIN / tool), "--version"], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and done.stdout.startswith(f"{tool} ") and done.stdout.count("\n") == 1
        assert "exit codes" in subprocess.run([str(BIN / tool), "--help"], capture_output=True, text=True,
                                              timeout=60, check=False).stdout
    assert "exit codes" in ok(jitctl(settings, "requests", "--help"))
    assert ok(jitctl(settings, "apply", "--version")).startswith("jitctl ")
    script = ok(jitctl(settings, "completion", "bash"))
    assert "complete -F _jitctl jitctl" in script and "PENDING" in script and "--end-active" in script
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30, check=False)
    assert syntax.returncode == 0, syntax.stderr
    assert ok(jitctl(settings, "completion", "zsh")).startswith("autoload -U +X bashcompinit")
    current = json.loads(ok(jitctl(settings, "db", "current", "--json")))
    assert current["at_head"] and current["revision"] == current["head"]
    ok(jitctl(settings, "db", "check"))
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert jitctl(settings, "db", "check", JIT_DATABASE_URL=fresh).returncode == 1
    assert not (tmp_path / "fresh.db").exists()  # a check never creates the database
    upgraded = json.loads(ok(jitctl(settings, "db", "upgrade", "--json", JIT_DATABASE_URL=fresh)))
    assert upgraded["revision"] == upgraded["head"] == current["head"]


@sqlite_only
def test_publish_checks_what_the_daemons_check(settings: Settings, tmp_path: Path) -> None:
    data = {"checkout_id": "co-1", "secret_id": "sec-0-0", "reason": "manual"}
    for args, message in [
        (("--source", ""), "source"),
        (("--data", json.dumps(data | {"checkotu_id": "x"})), "has no field(s) checkotu_id"),
        (("--data", "@/nonexistent.json"), "cannot read it"),
    ]:
        done = jitctl(settings, "publish", "secret.checked_in", *(args if "--data" in args else
                                                                  (*args, "--data", json.dumps(data))))
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    tap = EventTap(settings)
    try:
        path = tmp_path / "data.json"
        path.write_text(json.dumps(data))
        sent = json.loads(ok(jitctl(settings, "publish", "secret.checked_in", "--data", f"@{path}", "--json")))
        piped = json.loads(ok(jitctl(settings, "publish", "secret.checked_in", "--json",
                                     stdin=json.dumps(data | {"checkout_id": "co-2"}))))
        seen = tap.wait_for("secret.checked_in", count=2)
        assert {e["id"] for e in seen} == {sent["event_id"], piped["event_id"]}
        assert {e["data"]["checkout_id"] for e in seen} == {"co-1", "co-2"}
    finally:
        tap.close()


@sqlite_only
def test_a_daemon_logs_its_name_and_version_on_every_line(settings: Settings) -> None:
    from shared.version import VERSION

    proc = subprocess.Popen([str(BIN / "jit-approval")], env=settings_env(settings) | {"JIT_LOG_FORMAT": "json"},
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        # Up to the consumer's ready line: by then SIGTERM's handler is installed (daemon.started comes before).
        for line in proc.stderr:
            lines.append(json.loads(line))
            if lines[-1]["event"] == "amqp.consumer.ready":
                break
        assert lines and lines[-1]["event"] == "amqp.consumer.ready", lines
        assert "daemon.started" in [entry["event"] for entry in lines]
        assert all(entry["daemon"] == "approval" and entry["version"] == VERSION for entry in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        if proc.stderr is not None:
            proc.stderr.close()
