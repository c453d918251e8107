"""The configuration file's validation: every rule refuses the whole file and names the rule and the item."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config_file import ConfigError, load_config

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "sample-config.yaml"


def sample() -> dict[str, Any]:
    return yaml.safe_load(SAMPLE.read_text())


def refused(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(yaml.safe_dump(doc))
    return str(info.value)


def test_the_sample_is_valid() -> None:
    config = load_config(SAMPLE.read_text())
    assert [t.id for t in config.tasks] == ["jit-web-admins"]
    assert config.applications[0].hosts[0].winrm is not None
    assert config.tasks[0].on_revoke == "report"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "{}\n", "\n\n"])
def test_an_empty_or_comments_only_file_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(text)


@pytest.mark.parametrize("text, key", [
    ("users: []\nusers: []\n", "users"),
    ("tasks: []\nusers:\n  - id: a\n    kind: internal\n    kind: vendor_rep\n", "kind"),
])
def test_a_key_given_twice_is_refused_not_last_one_wins(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}' appears twice"):
        load_config(text)


def test_the_sample_with_users_appended_again_is_refused() -> None:
    with pytest.raises(ConfigError, match="key 'users' appears twice in one mapping"):
        load_config(SAMPLE.read_text() + "\nusers: []\n")


def mutate(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(sample())
    node: Any = doc
    parts = path.split("/")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return doc


DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    ("users/0/colour", "red", "users[0] (alice): unknown key 'colour'"),
    ("bogus", 1, "unknown key 'bogus'"),
    ("applications/0/hosts/0/winrm/proxy", "x", "unknown key 'proxy'"),
    ("users/0/permissions", ["LOGIN_TO_WEB_UI", "FLY"], "unknown permission(s) FLY"),
    ("users/0/kind", "contractor", "users[0] (alice).kind"),
    ("credential_providers/0/password_env", DELETE, "corp-admin needs password_env or password_file"),
    ("tasks/0/approval", "maybe", "tasks[0] (jit-web-admins).approval"),
    ("tasks/0/approval_window_seconds", 0, "approval_window_seconds: Input should be greater than 0"),
    ("tasks/0/approval_window_seconds", -5, "greater than 0"),
    ("tasks/0/group", "Admins/Other", "group must be a SID (S-1-5-...) or a valid local group name"),
    ("tasks/0/group", "S-1-5-x", "malformed SID"),
    ("tasks/0/on_revoke", "shutdown", "on_revoke"),
    ("tasks/0/removal_policy", "never", "removal_policy"),
    ("applications/0/hosts/0/winrm", {"scheme": "http", "transport": "basic"}, "Basic over HTTPS only"),
    ("applications/0/hosts/0/winrm", {"scheme": "ftp"}, "winrm.scheme"),
    ("applications/0/hosts/0/winrm", {"port": 70000}, "winrm.port"),
    ("applications/0/hosts/0/winrm", {"transport": "kerberos"}, "winrm.transport"),
    ("applications/0/hosts/0/winrm", {"verify_tls": "sometimes"}, "winrm.verify_tls"),
    ("applications/0/hosts/0/winrm", {"scheme": "http", "ca_file": "/ca.pem"}, "ca_file needs scheme https"),
    ("applications/0/hosts/0/winrm", DELETE, "host web01.corp.example of application app-web01 has no WinRM"),
    ("secrets/0/application", "app-nope", "secret sec-web01-svc: unknown application 'app-nope'"),
    ("secrets/0/credential_provider", "nope", "secret sec-web01-svc: unknown credential provider 'nope'"),
    ("secrets/0/checkout_enabled", False, "task jit-web-admins: secret sec-web01-svc does not have checkout enabled"),
    ("secrets/0/account", "bad/name", "account 'bad/name' of secret sec-web01-svc"),
    ("tasks/0/secrets", ["sec-nope"], "task jit-web-admins: unknown secret 'sec-nope'"),
    ("tasks/0/secrets", ["sec-web01-svc", "sec-web01-svc"], "secret sec-web01-svc listed twice"),
    ("tasks/0/drift", "ignore", "tasks[0] (jit-web-admins).drift: Input should be 'report' or 'remove'"),
])
def test_rule_breaks_are_refused_naming_the_item(path: str, value: Any, message: str) -> None:
    assert message in refused(mutate(path, value))


def test_basic_over_http_is_allowed_only_explicitly() -> None:
    doc = mutate("applications/0/hosts/0/winrm", {"scheme": "http", "transport": "basic",
                                                  "allow_unencrypted_basic": True})
    winrm = load_config(yaml.safe_dump(doc)).applications[0].hosts[0].winrm
    assert winrm is not None and winrm.effective_port == 5985


def test_a_secret_in_two_tasks_is_refused() -> None:
    doc = sample()
    doc["tasks"].append({**doc["tasks"][0], "id": "second"})
    assert "secret sec-web01-svc is in two tasks (jit-web-admins and second)" in refused(doc)


@pytest.mark.parametrize("kind", ["users", "credential_providers", "applications", "secrets", "tasks"])
def test_duplicate_ids_are_refused(kind: str) -> None:
    doc = sample()
    doc[kind].append(copy.deepcopy(doc[kind][0]))
    assert "duplicate" in refused(doc) and f"id {doc[kind][0]['id']!r}" in refused(doc)


def test_every_problem_is_listed_at_once() -> None:
    doc = mutate("secrets/0/application", "app-nope")
    doc["tasks"][0]["secrets"].append("sec-ghost")
    message = refused(doc)
    assert "unknown application 'app-nope'" in message and "unknown secret 'sec-ghost'" in message


def test_not_yaml_is_refused() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("users: [unclosed")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config("- a list")


RULE = "rule: a secret's account must be a user account, never a group or a well-known principal"


@pytest.mark.parametrize(("account", "domain", "why"), [
    ("Everyone", None, "well-known group or principal"),
    ("Authenticated Users", None, "well-known group or principal"),
    ("Domain Users", "CORP", "well-known group or principal"),
    ("domain admins", "CORP", "well-known group or principal"),
    ("Administrators", None, "well-known group or principal"),
    ("SYSTEM", None, "well-known group or principal"),
    ("LocalService", "NT AUTHORITY", "built-in principal"),
    ("NT AUTHORITY\\NETWORK SERVICE", None, "well-known group or principal"),
    ("Whatever", "BUILTIN", "built-in principal"),
    ("S-1-1-0", None, "is a SID"),
    ("S-1-5-21-1004336348-1177238915-682003330-1001", None, "is a SID"),
])
def test_accounts_that_are_not_users_are_refused(account: str, domain: str | None, why: str) -> None:
    doc = mutate("secrets/0/account", account)
    doc["secrets"][0]["domain"] = domain
    message = refused(doc)
    assert "secrets[0] (sec-web01-svc): account" in message and why in message and RULE in message


def test_task_drift_defaults_to_report() -> None:
    assert load_config(SAMPLE.read_text()).tasks[0].drift == "report"
    doc = mutate("tasks/0/drift", "remove")
    assert load_config(yaml.safe_dump(doc)).tasks[0].drift == "remove"


def test_host_addresses_are_canonical() -> None:
    doc = mutate("applications/0/hosts/0/address", "WEB01.Corp.Example.")
    assert load_config(yaml.safe_dump(doc)).applications[0].hosts[0].address == "web01.corp.example"


def test_hosts_differing_only_in_case_are_one_host_listed_twice() -> None:
    doc = sample()
    hosts = doc["applications"][0]["hosts"]
    hosts.append({**hosts[0], "address": "Web01.CORP.example."})
    assert "application app-web01: host web01.corp.example listed twice" in refused(doc)
