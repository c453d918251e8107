"""The demo's sample configuration: two applications on two simulated hosts, two tasks."""

from __future__ import annotations

from typing import Any

import yaml

APPROVER = ["LOGIN_TO_WEB_UI", "APPROVE_PRIVILEGE_ELEVATION_REQUEST", "APPROVE_SECRET_ACCESS_REQUEST",
            "VIEW_SECRETS_AND_CREDENTIAL_PROVIDER_CONFIGS", "UNLOCK_SECRET"]
REQUESTER = ["LOGIN_TO_WEB_UI", "VIEW_APPLICATION", "CONNECT", "VIEW_SECRETS_AND_CREDENTIAL_PROVIDER_CONFIGS"]
ADMINISTRATORS = "S-1-5-32-544"
SHORT_WINDOW_SECONDS = 6


def sample_config(hosts: list[dict[str, Any]]) -> str:
    """YAML for hosts `web` and `db` (the simulator's ready line gives their addresses and ports)."""
    web, db = hosts

    def winrm(host: dict[str, Any]) -> dict[str, Any]:
        # NTLM over http: WinRM message encryption, as a real Windows host does by default.
        return {"scheme": "http", "port": host["port"], "transport": "ntlm", "verify_tls": False}

    config = {
        "users": [
            {"id": "alice", "kind": "internal", "permissions": REQUESTER},
            {"id": "bob", "kind": "internal", "permissions": APPROVER},
        ],
        "credential_providers": [
            {"id": "demo-admin", "username": "CORP\\svc-jit", "password_env": "JIT_DEMO_PASSWORD"},
        ],
        "applications": [
            {"id": "app-web", "hosts": [{"address": web["address"], "winrm": winrm(web)}]},
            {"id": "app-db", "hosts": [{"address": db["address"], "winrm": winrm(db)}]},
        ],
        "secrets": [
            {"id": "sec-web-admin", "account": "web-admin", "domain": "CORP", "application": "app-web",
             "credential_provider": "demo-admin", "checkout_enabled": True},
            {"id": "sec-web-ops", "account": "web-ops", "domain": "CORP", "application": "app-web",
             "credential_provider": "demo-admin", "checkout_enabled": True},
            {"id": "sec-web-report", "account": "web-report", "domain": "CORP", "application": "app-web",
             "credential_provider": "demo-admin", "checkout_enabled": True},
            {"id": "sec-db-admin", "account": "db-admin", "domain": "CORP", "application": "app-db",
             "credential_provider": "demo-admin", "checkout_enabled": True},
        ],
        "tasks": [
            {"id": "jit-admins", "group": ADMINISTRATORS, "approval": "required", "approval_window_seconds": 3600,
             "removal_policy": "on_secret_check_in", "secrets": ["sec-web-admin", "sec-web-ops", "sec-db-admin"]},
            {"id": "jit-short", "group": ADMINISTRATORS, "approval": "required",
             "approval_window_seconds": SHORT_WINDOW_SECONDS, "removal_policy": "on_secret_check_in",
             "secrets": ["sec-web-report"]},
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)
