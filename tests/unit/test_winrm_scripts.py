"""The script templates: data only in the one base64 literal, parsed back exactly, and short enough for cmd.exe."""

from __future__ import annotations

import pytest

from shared.winrm import scripts

BIG_SID = "S-1-5-21-4294967295-4294967295-4294967295-4294967295"
LONGEST = {"JIT_GROUP": "G" * 256, "JIT_GROUP_KIND": "Name", "JIT_GROUP_SID": BIG_SID,
           "JIT_MEMBER": "D" * 15 + "\\" + "\u0431" * 20, "JIT_MEMBER_SID": BIG_SID,
           "JIT_SESSION_ID": "99999", "JIT_LOGOFF": "1"}


@pytest.mark.parametrize("name", sorted(scripts.ALL_SCRIPTS))
def test_each_template_has_one_data_literal_and_round_trips(name: str) -> None:
    template = scripts.ALL_SCRIPTS[name]
    assert template.count(scripts.DATA_PLACEHOLDER) == 1
    assert f"'{scripts.DATA_PLACEHOLDER}'" in template
    data = {"JIT_MEMBER": "o'brien & $(calc) %PATH%", "JIT_GROUP_SID": "S-1-5-32-544"}
    assert scripts.parse_rendered(scripts.render(template, data)) == (name, data)


@pytest.mark.parametrize("name", sorted(scripts.ALL_SCRIPTS))
def test_the_command_line_stays_under_cmd_exe_s_8191_characters(name: str) -> None:
    template = scripts.ALL_SCRIPTS[name]
    rendered = scripts.render(template, {k: v for k, v in LONGEST.items() if f"env:{k}" in template})
    line = " ".join([scripts.POWERSHELL, *scripts.powershell_arguments(rendered)])
    assert len(line) < 8191


@pytest.mark.parametrize("literal", ["", "'", "x'; calc; '", "e30", "e30=\n", "W10=", "eyJhIjogMX0=", "bnVsbA=="])
def test_anything_but_base64_of_a_json_object_of_strings_is_no_script(literal: str) -> None:
    assert scripts.parse_rendered(scripts.RESOLVE.replace(scripts.DATA_PLACEHOLDER, literal)) is None
    assert scripts.parse_rendered(scripts.RESOLVE) is None
