"""Settings are checked by the names people type, and the README's table is the model's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.settings import Settings, SettingsError, settings_table

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_readme_settings_table_is_generated_from_the_model() -> None:
    assert settings_table() in README, "regenerate it: .venv/bin/python -m shared.settings"
    for name in Settings.model_fields:
        assert f"| `JIT_{name.upper()}` |" in README


@pytest.mark.parametrize("environ, message", [
    ({"JIT_WROKERS": "4"}, "JIT_WROKERS is not a setting (did you mean JIT_WORKERS)"),
    ({"JIT_LOG_LEVEL": "verbose"}, "JIT_LOG_LEVEL='verbose': Input should be 'debug', 'info'"),
    ({"JIT_WORKERS": "many"}, "JIT_WORKERS='many': Input should be a valid integer"),
    ({"JIT_WORKERS": "0"}, "JIT_WORKERS='0': Input should be greater than or equal to 1"),
    ({"JIT_QUEUE_TYPE": "stream"}, "JIT_QUEUE_TYPE='stream'"),
    ({"JIT_DATABASE_URL": "postgres://jit@db/jit"}, "JIT_DATABASE_URL: unknown database driver 'postgres'"),
    ({"JIT_DATABASE_URL": "garbage"}, "JIT_DATABASE_URL: not a database URL"),
    ({"JIT_DATABASE_URL": "/var/lib/jit.db"}, "JIT_DATABASE_URL: not a database URL"),
    ({"JIT_DATABASE_URL": "mysql://x@h/db"}, "JIT_DATABASE_URL: mysql is not supported"),
    ({"JIT_DATABASE_URL": "sqlite://"}, "JIT_DATABASE_URL: the SQLite URL names no file"),
    ({"JIT_AMQP_URL": "garbage"}, "JIT_AMQP_URL: not a RabbitMQ URL"),
    ({"JIT_AMQP_URL": "amqp://host:port/"}, "JIT_AMQP_URL: not a RabbitMQ URL"),
])
def test_errors_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_environment(environ)
    assert message in str(info.value)


def test_every_problem_is_reported_at_once_and_passwords_are_not_echoed() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_environment({"JIT_WROKERS": "4", "JIT_PREFETCH": "x",
                                   "JIT_AMQP_URL": "amqp://u:s3cret@host:port/"})
    assert len(info.value.problems) == 3 and "s3cret" not in str(info.value)


def test_reserved_families_and_case_are_accepted() -> None:
    settings = Settings.from_environment({"JIT_CRED_CORP_ADMIN": "pw", "JIT_DEMO_PASSWORD": "pw",
                                          "JIT_WINRM_SIM_PASSWORD": "pw", "JIT_TEST_AMQP_URL": "amqp://h/",
                                          "JIT_LOG_LEVEL": "DEBUG", "JIT_DATABASE_URL": "postgresql://jit@db/jit"})
    assert settings.log_level == "debug" and settings.database_url == "postgresql://jit@db/jit"
    assert Settings.from_environment({}) == Settings.from_environment({"PATH": "/bin"})


DOCS = Path(__file__).resolve().parents[2] / "docs"


def _documented_defaults() -> dict[str, str]:
    """`| JIT_X | default |` rows (docs/elevator.md, docs/approval.md) and `name` (default) in docs/reaper.md."""
    found: dict[str, str] = {}
    for page in ("elevator.md", "approval.md", "reaper.md"):
        text = (DOCS / page).read_text()
        for name, value in re.findall(r"^\| `JIT_([A-Z_]+)` \| ([0-9.]+) \|", text, re.M):
            found[name.lower()] = value
        section = text.split("## Settings (JIT_*)", 1)[1].split("\n## ", 1)[0] if "## Settings (JIT_*)" in text else ""
        for name, value in re.findall(r"`([a-z_]+)` \(([0-9.]+)", section):
            found[name] = value
    return found


def test_the_documented_defaults_are_the_code_s() -> None:
    documented = _documented_defaults()
    assert {"lease_seconds", "winrm_deadline_seconds", "retry_in_process_seconds", "workers"} <= set(documented)
    for name, value in documented.items():
        assert float(value) == float(Settings.model_fields[name].default), f"{name}: docs say {value}"


def test_the_documented_lease_rule_holds_for_the_defaults() -> None:
    """docs/reaper.md: lease_seconds above one last call (winrm_deadline_seconds + 2 s, shared/winrm/client.py)."""
    defaults = Settings.from_environment({})
    assert defaults.lease_seconds > defaults.winrm_deadline_seconds + 2
    assert "keep `lease_seconds` above one last call" in (DOCS / "reaper.md").read_text().replace("\n", " ")
