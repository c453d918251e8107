"""The task fields of approval by more than one, decision timeouts and extensions: validated, stored, re-applied."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.config_file import ConfigError, load_config
from shared.db.config_apply import apply_config
from shared.db.engine import transaction
from shared.db.facts import secret_facts
from shared.db.models import Task

CONFIG = """
users:
  - {id: alice, kind: internal, permissions: [LOGIN_TO_WEB_UI, VIEW_APPLICATION, CONNECT,
                                              VIEW_SECRETS_AND_CREDENTIAL_PROVIDER_CONFIGS]}
credential_providers:
  - {id: corp-admin, username: 'CORP\\\\svc-jit', password_env: JIT_CRED_CORP_ADMIN}
applications:
  - id: app-web01
    hosts: [{address: web01.corp.example, winrm: {scheme: https, transport: ntlm}}]
secrets:
  - {id: sec-web01-svc, account: svc-app, application: app-web01, credential_provider: corp-admin,
     checkout_enabled: true}
tasks:
  - id: jit-web-admins
    group: S-1-5-32-544
    approval: required
    approval_window_seconds: 3600
    secrets: [sec-web01-svc]
"""
FIELDS = """    approvals_required: 2
    deny: majority
    decision_timeout_seconds: 900
    extension: approval
    extension_max_total_seconds: 14400
"""


def with_fields(fields: str) -> str:
    return CONFIG.replace("    secrets: [sec-web01-svc]\n", fields + "    secrets: [sec-web01-svc]\n")


def test_the_fields_are_stored_and_reach_the_rules(factory: sessionmaker[Session]) -> None:
    now = datetime.now(UTC)
    with transaction(factory) as s:
        apply_config(s, load_config(CONFIG), now=now)
    with factory() as s:
        task = s.get(Task, "jit-web-admins")
        assert task is not None
        assert (task.approvals_required, task.deny_policy, task.decision_timeout_seconds, task.extension,
                task.extension_max_total_seconds) == (1, "any", None, "refused", None)  # the defaults: as before
    with transaction(factory) as s:
        summary = apply_config(s, load_config(with_fields(FIELDS)), now=now)
        assert summary.updated and "task jit-web-admins" in summary.updated[0]
    with transaction(factory) as s:
        assert not apply_config(s, load_config(with_fields(FIELDS)), now=now).changed
    with factory() as s:
        facts = secret_facts(s, "sec-web01-svc")
        assert facts is not None and facts.task is not None
        assert (facts.task.approvals_required, facts.task.deny_policy, facts.task.decision_timeout_seconds,
                facts.task.extension, facts.task.extension_max_total_seconds) == (2, "majority", 900, "approval", 14400)


@pytest.mark.parametrize(("fields", "problem"), [
    ("    approvals_required: 0\n", "approvals_required: Input should be greater than or equal to 1"),
    ("    deny: all\n", "deny: Input should be 'any' or 'majority'"),
    ("    decision_timeout_seconds: 0\n", "decision_timeout_seconds: Input should be greater than 0"),
    ("    extension: sometimes\n", "extension: Input should be 'refused', 'automatic' or 'approval'"),
    ("    extension_max_total_seconds: -1\n", "extension_max_total_seconds: Input should be greater than 0"),
])
def test_bad_values_are_refused_naming_the_field(fields: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(with_fields(fields))


def test_more_than_one_approval_needs_approval_required() -> None:
    text = with_fields("    approvals_required: 2\n").replace("approval: required", "approval: not_required")
    with pytest.raises(ConfigError, match="approvals_required 2 needs approval: required"):
        load_config(text)
