"""Name validation: what Windows forbids, plus what we refuse on purpose (quote look-alikes, non-printables)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.winrm import InvalidNameError
from shared.winrm.names import validate_group, validate_member, validate_session_id

FORBIDDEN = set('"/\\[]:;|=,+*?<>@`') | {chr(c) for c in range(32)} | {"\x7f", "\u2018", "\u2019", "\u201a",
                                                                      "\u201b", "\u201c", "\u201d"}


@pytest.mark.parametrize("name", ["bob", "CORP\\bob", "o'brien", "a&b", "$x", "%PATH%", "a (b)", "J\u00f6rg",
                                  "x" * 20, "CORP-1\\svc.jit_2", "svc$"])
def test_accepted_members(name: str) -> None:
    assert validate_member(name) == name


@pytest.mark.parametrize("name", ["", "a;b", "a\u2019b", "a\nb", " bob", "bob ", "...", "x" * 21, "a\\b\\c",
                                  "\\bob", "CORP\\", "-bad-\\x", "a@b", "a`b", "e\u0301", "a\u00a0b", "a\u200db"])
def test_refused_members(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_member(name)


@given(st.text(max_size=40))
def test_nothing_forbidden_ever_passes(name: str) -> None:
    try:
        validate_member(name)
    except InvalidNameError:
        return
    sam = name.split("\\")[-1]
    assert not set(sam) & FORBIDDEN
    assert 1 <= len(sam) <= 20 and name.count("\\") <= 1
    assert all(c.isalnum() or c in " !#$%&'()-.^_{}~" for c in sam)


@given(st.text(alphabet=string.ascii_letters + string.digits + "'&$%()_-.", min_size=1, max_size=20))
def test_plain_names_pass(name: str) -> None:
    if name.strip(". "):
        assert validate_member(f"CORP\\{name}") == f"CORP\\{name}"


def test_groups() -> None:
    assert validate_group("S-1-5-32-544") == ("SID", "S-1-5-32-544")
    assert validate_group("s-1-5-21-1-2-3-1001") == ("SID", "S-1-5-21-1-2-3-1001")
    assert validate_group("Remote Desktop Users") == ("Name", "Remote Desktop Users")
    for bad in ("S-1-5-32-x", "S-1-5", "BUILTIN\\Administrators", "Admins;x", "", "a\u2019"):
        with pytest.raises(InvalidNameError):
            validate_group(bad)


def test_session_ids() -> None:
    assert validate_session_id("2") == "2"
    for bad in ("", "-1", "1 2", "12345678", "1;2", "\u0662"):
        with pytest.raises(InvalidNameError):
            validate_session_id(bad)
