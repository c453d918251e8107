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


@pytest.mark.parametrize("name", sorted(scripts.ALL_SCRIPTS))
def test_no_script_depends_on_get_localgroupmember_alone(name: str) -> None:
    """Windows PowerShell 5.1's Get-LocalGroupMember fails on a group holding an orphaned SID: the checks read
    the group's SIDs by ADSI, and the one listing falls back to ADSI (the simulator models both, so this holds
    the templates to it)."""
    template = scripts.ALL_SCRIPTS[name]
    body = template.split("\ntry {\n", 1)[1]
    assert "Get-LocalGroupMember" not in body, "every listing goes through Get-JitSids or Get-JitMembers"
    if "$listed" in body:
        assert "function Get-JitSids($g)" in template and "@(Get-JitSids $group) -contains $sid.Value" in body
        assert scripts.ADSI_FALLBACK in template.split("function Get-JitSids($g)")[1].split("\n}\n")[0]
    if name == "list_members":
        function = template.split("function Get-JitMembers($g)")[1].split("\ntry {\n")[0]
        assert "Get-LocalGroupMember" in function and scripts.ADSI_FALLBACK in function
        assert "-match '^(GroupNotFound|AccessDenied),') { throw }" in function
