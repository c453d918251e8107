"""The README stays true: its two commands exist and every jitctl command it lists is a real one."""

from __future__ import annotations

import re
from pathlib import Path

from jitctl.main import parser

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_the_two_setup_commands_exist_and_ci_runs_the_test_one() -> None:
    commands = re.findall(r"^bash (scripts/\S+)", README, re.M)
    assert commands == ["scripts/demo", "scripts/test"]
    assert all((REPO / c).is_file() for c in commands)
    assert "bash scripts/test" in (REPO / ".ci" / "run").read_text()


def test_every_jitctl_command_in_the_readme_exists() -> None:
    listed = set(re.findall(r"^\| `jitctl ([a-z-]+)", README, re.M))
    subparsers = next(a for a in parser()._actions if a.dest == "command")
    assert listed and listed <= set(subparsers.choices)  # type: ignore[arg-type]


def test_every_documented_variable_is_a_setting() -> None:
    from shared.settings import Settings

    documented = {v.lower().removeprefix("jit_") for v in re.findall(r"`(JIT_[A-Z_]+)`", README)}
    fields = set(Settings.model_fields)
    assert {"amqp_url", "database_url", "exchange", "log_format", "log_level"} <= documented
    unknown = {d for d in documented if d not in fields and not d.startswith(("cred_", "test_", "demo_", "winrm_sim_"))}
    unknown -= {"wrokers"}  # the README's example of a typo that is refused
    assert unknown == set()
