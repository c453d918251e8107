"""`apply_config` on both databases: idempotence, updates, removals; grants survive configuration (a file that
would remove what an active request depends on is refused, unless `end_active` ends the request first)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.config_file import load_config
from shared.db.config_apply import ActiveRequestsError, Summary, apply_config
from shared.db.engine import transaction
from shared.db.models import AuditEntry, Host, OutboxEvent, Request, Secret, Task, TaskSecret, UserPermission
from shared.rules import REQUESTER_PERMISSIONS
from shared.states import State
from tests.factories import make_request

HOST = {"address": "127.0.0.1", "winrm": {"scheme": "http", "port": 5985, "transport": "basic",
                                         "allow_unencrypted_basic": True}}
BASE: dict[str, Any] = {
    "users": [{"id": "alice", "kind": "internal", "permissions": list(REQUESTER_PERMISSIONS)}],
    "credential_providers": [{"id": "prov", "username": "svc", "password_env": "JIT_TEST_CRED_PASSWORD"}],
    "applications": [{"id": "app", "hosts": [HOST]}],
    "secrets": [{"id": f"sec-0-{i}", "account": f"acct-0-{i}", "application": "app", "credential_provider": "prov",
                 "checkout_enabled": True} for i in range(4)],
    "tasks": [{"id": "task", "group": "S-1-5-32-544", "approval": "required", "approval_window_seconds": 3600,
               "secrets": [f"sec-0-{i}" for i in range(4)]}],
}
DEPENDS = "the configuration removes what it depends on: "


def apply(factory: sessionmaker[Session], doc: dict[str, Any], *, end_active: bool = False) -> Summary:
    """As `jitctl apply --prune`: these tests are about what removals do to requests."""
    with transaction(factory) as s:
        return apply_config(s, load_config(yaml.safe_dump(doc)), now=datetime.now(UTC), end_active=end_active,
                            prune=True)


def refused(factory: sessionmaker[Session], doc: dict[str, Any]) -> str:
    with pytest.raises(ActiveRequestsError) as info:
        apply(factory, doc)
    return str(info.value)


def snapshot(factory: sessionmaker[Session]) -> tuple[Any, ...]:
    """Everything apply may change, to show that a refused file changed nothing."""
    with factory() as s:
        return (sorted((r.id, r.state, r.end_trigger) for r in s.scalars(select(Request))),
                sorted(s.scalars(select(Secret.id))),
                sorted((t.task_id, t.secret_id) for t in s.scalars(select(TaskSecret))),
                sorted(s.scalars(select(Host.address))), sorted(s.scalars(select(Task.id))),
                len(s.scalars(select(AuditEntry)).all()), len(s.scalars(select(OutboxEvent)).all()))


def audit_of(factory: sessionmaker[Session], request_id: str) -> list[AuditEntry]:
    with factory() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.request_id == request_id).order_by(AuditEntry.id)))


def state(factory: sessionmaker[Session], request_id: str) -> tuple[str, str | None]:
    with factory() as s:
        row = s.get(Request, request_id)
        assert row is not None
        return row.state, row.end_trigger


def test_apply_is_idempotent_and_reports_changes(factory: sessionmaker[Session]) -> None:
    first = apply(factory, BASE)
    assert "task task" in first.created and "host 127.0.0.1 (app)" in first.created
    again = apply(factory, BASE)
    assert not again.changed and again.as_dict()["created"] == [] and again.as_dict()["updated"] == []
    doc = copy.deepcopy(BASE)
    doc["tasks"][0]["approval_window_seconds"] = 60
    doc["users"][0]["permissions"].append("UNLOCK_SECRET")
    doc["applications"][0]["hosts"][0]["winrm"]["port"] = 5986
    changed = apply(factory, doc)
    assert "task task (approval_window_seconds)" in changed.updated
    assert "user alice (permissions)" in changed.updated
    assert "host 127.0.0.1 (app) (port)" in changed.updated
    with factory() as s:
        assert set(s.scalars(select(UserPermission.permission))) == {*REQUESTER_PERMISSIONS, "UNLOCK_SECRET"}
        assert s.scalars(select(Host.port)).one() == 5986
    assert not apply(factory, doc).changed


def test_removing_secrets_of_active_requests_is_refused_naming_each(factory: sessionmaker[Session]) -> None:
    apply(factory, BASE)
    pending = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.PENDING)
    elevated = make_request(factory, secret_id="sec-0-1", host="127.0.0.1", state=State.ELEVATED)
    approved = make_request(factory, secret_id="sec-0-2", host="127.0.0.1", state=State.APPROVED)
    done = make_request(factory, secret_id="sec-0-3", host="127.0.0.1", state=State.REVOKED)
    doc = copy.deepcopy(BASE)
    doc["secrets"], doc["tasks"][0]["secrets"] = [], []
    before = snapshot(factory)
    message = refused(factory, doc)
    assert f"request {elevated.id} (ELEVATED, host 127.0.0.1, secret sec-0-1): secret sec-0-1 is removed" in message
    assert f"request {approved.id} (APPROVED, host 127.0.0.1, secret sec-0-2): secret sec-0-2 is removed" in message
    assert pending.id not in message and done.id not in message  # PENDING is just cancelled; REVOKED is over
    assert "nothing was changed" in message and "--end-active" in message
    assert snapshot(factory) == before

    summary = apply(factory, doc, end_active=True)
    assert sorted(e.split(":")[0] for e in summary.ended) == sorted([
        f"request {pending.id} (PENDING -> CANCELLED)", f"request {elevated.id} (ELEVATED -> REVOKING)",
        f"request {approved.id} (APPROVED -> REVOKING)"])
    assert {f"secret sec-0-{i}" for i in range(4)} <= set(summary.removed)  # nothing is kept for REVOKING
    with factory() as s:
        rows = {r.id: r for r in s.scalars(select(Request))}
        assert (rows[pending.id].state, rows[pending.id].end_trigger) == ("CANCELLED", "config_removed")
        for rid in (elevated.id, approved.id):
            assert rows[rid].state == "REVOKING" and rows[rid].end_trigger == "config_removed"
            assert rows[rid].next_attempt_at is not None and rows[rid].revoking_since is not None
        assert rows[done.id].state == "REVOKED"
        assert [o.type for o in s.scalars(select(OutboxEvent))] == ["elevation.cancelled"]
        assert s.scalars(select(Secret)).all() == [] and s.scalars(select(TaskSecret)).all() == []
    for rid, to_state in ((pending.id, "CANCELLED"), (elevated.id, "REVOKING")):
        end = audit_of(factory, rid)[-1]
        assert (end.action, end.actor, end.to_state) == ("end", "jitctl apply", to_state)
        assert DEPENDS in (end.reason or "") and "is removed" in (end.reason or "")
    assert not apply(factory, doc).changed


def test_a_pending_request_alone_is_cancelled_without_end_active(factory: sessionmaker[Session]) -> None:
    apply(factory, BASE)
    pending = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.PENDING)
    doc = copy.deepcopy(BASE)
    doc["tasks"][0]["secrets"].remove("sec-0-0")
    summary = apply(factory, doc)
    assert summary.ended == [f"request {pending.id} (PENDING -> CANCELLED): {DEPENDS}secret sec-0-0 leaves task task"]
    assert state(factory, pending.id) == ("CANCELLED", "config_removed")


def test_revoking_requests_do_not_block_and_keep_no_rows(factory: sessionmaker[Session]) -> None:
    apply(factory, BASE)
    revoking = make_request(factory, secret_id="sec-0-1", host="127.0.0.1", state=State.REVOKING)
    doc = copy.deepcopy(BASE)
    doc["secrets"], doc["tasks"], doc["applications"], doc["credential_providers"] = [], [], [], []
    summary = apply(factory, doc)
    assert summary.ended == []
    assert {"secret sec-0-1", "task task", "application app", "host 127.0.0.1 (app)",
            "credential provider prov"} <= set(summary.removed)
    assert state(factory, revoking.id) == ("REVOKING", None)
    assert "kept" not in summary.as_dict()


def _other_provider(doc: dict[str, Any]) -> None:
    doc["credential_providers"] = [{"id": "prov2", "username": "svc2", "password_env": "JIT_TEST_CRED_PASSWORD"}]
    for secret in doc["secrets"]:
        secret["credential_provider"] = "prov2"


def _other_application(doc: dict[str, Any]) -> None:
    doc["applications"].append({"id": "app2", "hosts": [HOST]})
    doc["secrets"][1]["application"] = "app2"


def _other_task(doc: dict[str, Any]) -> None:
    doc["tasks"][0]["secrets"].remove("sec-0-1")
    doc["tasks"].append({"id": "other", "group": "Remote Desktop Users", "approval": "not_required",
                         "approval_window_seconds": 60, "secrets": ["sec-0-1"]})


def _no_task(doc: dict[str, Any]) -> None:
    doc["tasks"] = [{**doc["tasks"][0], "id": "renamed"}]


def _no_host(doc: dict[str, Any]) -> None:
    doc["applications"][0]["hosts"] = [{**HOST, "address": "10.0.0.9"}]


def _no_application(doc: dict[str, Any]) -> None:
    doc["applications"] = [{"id": "app2", "hosts": [HOST]}]
    for secret in doc["secrets"]:
        secret["application"] = "app2"


@pytest.mark.parametrize(("change", "causes"), [
    (_other_provider, ["credential provider prov is removed"]),
    (_other_application, ["secret sec-0-1 moves from application app to app2"]),
    (_other_task, ["secret sec-0-1 moves from task task to task other"]),
    (_no_task, ["task task is removed"]),
    (_no_host, ["host 127.0.0.1 is removed from application app"]),
    (_no_application, ["secret sec-0-1 moves from application app to app2", "application app is removed"]),
])
def test_every_removal_under_an_active_request_is_refused(factory: sessionmaker[Session],
                                                          change: Callable[[dict[str, Any]], None],
                                                          causes: list[str]) -> None:
    apply(factory, BASE)
    active = make_request(factory, secret_id="sec-0-1", host="127.0.0.1", state=State.ELEVATING)
    doc = copy.deepcopy(BASE)
    change(doc)
    before = snapshot(factory)
    message = refused(factory, doc)
    assert f"request {active.id} (ELEVATING, host 127.0.0.1, secret sec-0-1): " + "; ".join(causes) in message
    assert snapshot(factory) == before
    summary = apply(factory, doc, end_active=True)
    assert summary.ended == [f"request {active.id} (ELEVATING -> REVOKING): {DEPENDS}" + "; ".join(causes)]
    assert state(factory, active.id) == ("REVOKING", "config_removed")
    assert not apply(factory, doc).changed


def _remove_alice(doc: dict[str, Any]) -> None:
    doc["users"] = []


def _alice_vendor_rep(doc: dict[str, Any]) -> None:
    doc["users"][0]["kind"] = "vendor_rep"


def _alice_without_connect(doc: dict[str, Any]) -> None:
    doc["users"][0]["permissions"].remove("CONNECT")


@pytest.mark.parametrize(("change", "reason"), [
    (_remove_alice, "requester alice is removed from the configuration"),
    (_alice_vendor_rep, "alice is a vendor representative"),
    (_alice_without_connect, "lacks the requester permission(s) CONNECT"),
])
def test_a_removed_or_demoted_requester_loses_active_requests(factory: sessionmaker[Session],
                                                              change: Callable[[dict[str, Any]], None],
                                                              reason: str) -> None:
    apply(factory, BASE)
    pending = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.PENDING)
    elevated = make_request(factory, secret_id="sec-0-1", host="127.0.0.1", state=State.ELEVATED)
    doc = copy.deepcopy(BASE)
    change(doc)
    summary = apply(factory, doc)  # no end_active needed: the requester may no longer hold them
    assert len(summary.ended) == 2 and all(reason in e for e in summary.ended)
    assert state(factory, pending.id) == ("CANCELLED", "config_removed")
    assert state(factory, elevated.id) == ("REVOKING", "config_removed")
    end = audit_of(factory, elevated.id)[-1]
    assert (end.actor, end.to_state) == ("jitctl apply", "REVOKING") and reason in (end.reason or "")
    with factory() as s:
        applied = s.scalars(select(AuditEntry).where(AuditEntry.action == "config.applied")
                            .order_by(AuditEntry.id.desc())).first()
        assert applied is not None and applied.details is not None
        assert len(applied.details["ended_requests"]) == 2


def test_hosts_are_stored_and_matched_in_canonical_form(factory: sessionmaker[Session]) -> None:
    doc = copy.deepcopy(BASE)
    doc["applications"][0]["hosts"] = [{**HOST, "address": "WEB01.Corp.Example."}]
    assert "host web01.corp.example (app)" in apply(factory, doc).created
    with factory() as s:
        assert s.scalars(select(Host.address)).all() == ["web01.corp.example"]
    doc["applications"][0]["hosts"] = [{**HOST, "address": "web01.corp.example"}]
    assert not apply(factory, doc).changed
    # A request for the host (recorded in canonical form) does not conflict with a file spelling it otherwise.
    elevated = make_request(factory, secret_id="sec-0-1", host="web01.corp.example", state=State.ELEVATED)
    doc["applications"][0]["hosts"] = [{**HOST, "address": "Web01.CORP.example"}]
    assert not apply(factory, doc).changed
    assert state(factory, elevated.id) == ("ELEVATED", None)


def test_a_stored_host_in_another_case_is_updated_not_duplicated(factory: sessionmaker[Session]) -> None:
    apply(factory, BASE)
    with transaction(factory) as s:
        s.add(Host(application_id="app", address="Web02.Corp.Example.", scheme="http", port=5985,
                   transport="basic", verify_tls=True))
    doc = copy.deepcopy(BASE)
    doc["applications"][0]["hosts"].append({**HOST, "address": "web02.corp.example"})
    summary = apply(factory, doc)
    assert "host web02.corp.example (app) (address)" in summary.updated
    with factory() as s:
        assert sorted(s.scalars(select(Host.address))) == ["127.0.0.1", "web02.corp.example"]
    assert not apply(factory, doc).changed


def test_task_drift_is_stored(factory: sessionmaker[Session]) -> None:
    apply(factory, BASE)
    with factory() as s:
        assert s.scalars(select(Task.drift)).one() == "report"
    doc = copy.deepcopy(BASE)
    doc["tasks"][0]["drift"] = "remove"
    assert "task task (drift)" in apply(factory, doc).updated
    with factory() as s:
        assert s.scalars(select(Task.drift)).one() == "remove"


@pytest.mark.parametrize("kind", ["applications", "credential_providers"])
def test_removing_whole_items_cascades(factory: sessionmaker[Session], kind: str) -> None:
    apply(factory, BASE)
    doc = copy.deepcopy(BASE)
    doc["secrets"], doc["tasks"], doc[kind] = [], [], []
    summary = apply(factory, doc)
    assert "task task" in summary.removed
    assert {f"secret sec-0-{i}" for i in range(4)} <= set(summary.removed)
    label = "application app" if kind == "applications" else "credential provider prov"
    assert label in summary.removed
    assert not apply(factory, doc).changed
