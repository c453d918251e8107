"""`jitctl apply` refuses credential sources outside their containment, naming each rule (issue 11)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from shared.credentials import CredentialError, password_path
from shared.settings import Settings
from tests.conftest import REPO, settings_env

JITCTL = str(REPO / ".venv" / "bin" / "jitctl")


def apply(tmp_path: Path, providers: list[dict[str, str]], winrm: dict[str, object] | None = None
          ) -> subprocess.CompletedProcess[str]:
    config = yaml.safe_load((REPO / "deploy" / "sample-config.yaml").read_text())
    config["credential_providers"] = providers
    config["secrets"][0]["credential_provider"] = providers[0]["id"]
    if winrm is not None:
        config["applications"][0]["hosts"][0]["winrm"] = winrm
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = settings_env(Settings(database_url=f"sqlite:///{tmp_path / 'jit.db'}"))
    subprocess.run([JITCTL, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    return subprocess.run([JITCTL, "apply", "-f", str(path)], env=env, capture_output=True, text=True, timeout=60)


def test_credential_sources_outside_their_containment_are_refused_with_the_rule(tmp_path: Path) -> None:
    refused = apply(tmp_path, [
        {"id": "a", "username": "u", "password_env": "JIT_AMQP_URL"},
        {"id": "b", "username": "u", "password_file": "/etc/shadow"},
        {"id": "c", "username": "u", "password_file": "/run/secrets/../../etc/shadow"},
        {"id": "d", "username": "u", "password_file": "${CREDENTIALS_DIRECTORY}/../x"},
        {"id": "e", "username": "u", "password_file": "relative/file"},
    ], winrm={"scheme": "https", "transport": "basic", "verify_tls": False})
    assert refused.returncode == 2, refused.stderr
    err = refused.stderr
    assert "credential provider a: password_env JIT_AMQP_URL is refused" in err and "JIT_CRED_" in err
    for provider in "bce":
        assert f"credential provider {provider}: password_file" in err
    assert "under /run/secrets (JIT_CREDENTIAL_DIRECTORY)" in err
    assert "credential provider d: password_file ${CREDENTIALS_DIRECTORY}/../x is refused" in err
    assert "Basic authentication with verify_tls: false is refused" in err


def test_contained_sources_are_accepted(tmp_path: Path) -> None:
    accepted = apply(tmp_path, [
        {"id": "a", "username": "u", "password_env": "JIT_CRED_A"},
        {"id": "b", "username": "u", "password_file": "/run/secrets/b"},
        {"id": "c", "username": "u", "password_file": "${CREDENTIALS_DIRECTORY}/c"},
        {"id": "d", "username": "u", "password_file": "$CREDENTIALS_DIRECTORY/d"},
    ], winrm={"scheme": "https", "transport": "basic", "verify_tls": True})
    assert accepted.returncode == 0, accepted.stderr


def test_the_credentials_directory_form_cannot_leave_the_directory(tmp_path: Path) -> None:
    assert password_path("p", "${CREDENTIALS_DIRECTORY}/x", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == tmp_path / "x"
    try:
        password_path("p", "${CREDENTIALS_DIRECTORY}/../x", {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    except CredentialError as exc:
        assert "leaves CREDENTIALS_DIRECTORY" in str(exc)
    else:
        raise AssertionError("a password file outside CREDENTIALS_DIRECTORY was accepted")
