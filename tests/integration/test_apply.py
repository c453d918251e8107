"""`apply_config` on both databases: idempotence, updates, removals, and requests of removed secrets revoked."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.config_file import load_config
from shared.db.config_apply import Summary, apply_config
from shared.db.engine import transaction
from shared.db.models import Host, OutboxEvent, Request, Secret, TaskSecret, UserPermission
from shared.db.targets import target_for
from shared.states import State
from tests.factories import make_request

HOST = {"address": "127.0.0.1", "winrm": {"scheme": "http", "port": 5985, "transport": "basic",
                                         "allow_unencrypted_basic": True}}
BASE: dict[str, Any] = {
    "users": [{"id": "alice", "kind": "internal", "permissions": ["LOGIN_TO_WEB_UI", "CONNECT"]}],
    "credential_providers": [{"id": "prov", "username": "svc", "password_env": "JIT_TEST_CRED_PASSWORD"}],
    "applications": [{"id": "app", "hosts": [HOST]}],
    "secrets": [{"id": f"sec-0-{i}", "account": f"acct-0-{i}", "application": "app", "credential_provider": "prov",
                 "checkout_enabled": True} for i in range(4)],
    "tasks": [{"id": "task", "group": "S-1-5-32-544", "approval": "required", "approval_window_seconds": 3600,
               "secrets": [f"sec-0-{i}" for i in range(4)]}],
}


def apply(factory: sessionmaker[Session], doc: dict[str, Any]) -> Summary:
    with transaction(factory) as s:
        return apply_config(s, load_config(yaml.safe_dump(doc)), now=datetime.now(UTC))


def test_apply_is_idempotent_and_reports_changes(factory: sessionmaker[Session]) -> None:
    first = apply(factory, BASE)
    assert "task task" in first.created and "host 127.0.0.1 (app)" in first.created
    again = apply(factory, BASE)
    assert not again.changed and again.as_dict()["created"] == [] and again.as_dict()["updated"] == []
    doc = copy.deepcopy(BASE)
    doc["tasks"][0]["approval_window_seconds"] = 60
    doc["users"][0]["permissions"].append("VIEW_APPLICATION")
    doc["applications"][0]["hosts"][0]["winrm"]["port"] = 5986
    changed = apply(factory, doc)
    assert "task task (approval_window_seconds)" in changed.updated
    assert "user alice (permissions)" in changed.updated
    assert "host 127.0.0.1 (app) (port)" in changed.updated
    with factory() as s:
        assert set(s.scalars(select(UserPermission.permission))) == {"LOGIN_TO_WEB_UI", "CONNECT", "VIEW_APPLICATION"}
        assert s.scalars(select(Host.port)).one() == 5986
    assert not apply(factory, doc).changed


def test_removed_secrets_end_their_requests(factory: sessionmaker[Session]) -> None:
    apply(factory, BASE)
    pending = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.PENDING)
    elevated = make_request(factory, secret_id="sec-0-1", host="127.0.0.1", state=State.ELEVATED)
    approved = make_request(factory, secret_id="sec-0-2", host="127.0.0.1", state=State.APPROVED)
    done = make_request(factory, secret_id="sec-0-3", host="127.0.0.1", state=State.REVOKED)
    doc = copy.deepcopy(BASE)
    doc["secrets"], doc["tasks"][0]["secrets"] = [], []
    summary = apply(factory, doc)
    assert sorted(summary.ended) == sorted([f"request {pending.id} cancelled", f"request {elevated.id} revoking",
                                            f"request {approved.id} revoking"])
    assert "secret sec-0-0" in summary.removed and "secret sec-0-3" in summary.removed
    assert "secret sec-0-1 (a request is still being revoked)" in summary.kept
    with factory() as s:
        rows = {r.id: r for r in s.scalars(select(Request))}
        assert (rows[pending.id].state, rows[pending.id].end_trigger) == ("CANCELLED", "config_removed")
        for rid in (elevated.id, approved.id):
            assert rows[rid].state == "REVOKING" and rows[rid].end_trigger == "config_removed"
            assert rows[rid].next_attempt_at is not None and rows[rid].revoking_since is not None
            # The reaper can still reach the host of a request being revoked.
            assert target_for(s, rows[rid]).account == rows[rid].account
        assert rows[done.id].state == "REVOKED"
        assert [o.type for o in s.scalars(select(OutboxEvent))] == ["elevation.cancelled"]
        assert s.scalars(select(TaskSecret)).all() == []
    assert not apply(factory, doc).changed  # kept rows are reported, not changes
    with transaction(factory) as s:
        for rid in (elevated.id, approved.id):
            row = s.get(Request, rid)
            assert row is not None
            row.state = State.REVOKED.value
    later = apply(factory, doc)
    assert {"secret sec-0-1", "secret sec-0-2"} <= set(later.removed) and not later.kept
    with factory() as s:
        assert s.scalars(select(Secret)).all() == []


def test_a_secret_moving_to_another_task_ends_its_request(factory: sessionmaker[Session]) -> None:
    apply(factory, BASE)
    moving = make_request(factory, secret_id="sec-0-0", host="127.0.0.1", state=State.ELEVATED)
    staying = make_request(factory, secret_id="sec-0-1", host="127.0.0.1", state=State.ELEVATED)
    doc = copy.deepcopy(BASE)
    doc["tasks"][0]["secrets"].remove("sec-0-0")
    doc["tasks"].append({"id": "other", "group": "Remote Desktop Users", "approval": "not_required",
                         "approval_window_seconds": 60, "on_revoke": "logoff", "secrets": ["sec-0-0"]})
    summary = apply(factory, doc)
    assert summary.ended == [f"request {moving.id} revoking"]
    assert "secret sec-0-0 in task other" in summary.created
    with factory() as s:
        assert s.get(Request, moving.id).state == "REVOKING"  # type: ignore[union-attr]
        assert s.get(Request, staying.id).state == "ELEVATED"  # type: ignore[union-attr]


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
