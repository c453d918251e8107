"""Name validation: what Windows forbids, plus what we refuse on purpose (quote look-alikes, non-printables)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.winrm import InvalidNameError
from shared.winrm.names import (
    validate_group,
    validate_group_sid,
    validate_member,
    validate_member_sid,
    validate_session_id,
)

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


@pytest.mark.parametrize("sid", ["S-1-5-21-1-2-3-1001", "s-1-5-21-3623811015-3361044348-30300820-1013",
                                 "S-1-5-21-1-2-3-500", "S-1-5-21-1-2-3-4294967295"])
def test_member_sids_are_accounts(sid: str) -> None:
    assert validate_member_sid(sid) == sid.upper()


@pytest.mark.parametrize("sid", ["", "CORP\\bob", "S-1-1-0", "S-1-5-11", "S-1-5-18", "S-1-5-32-544",
                                 "S-1-5-21-1-2-3-512", "S-1-5-21-1-2-3-513", "S-1-5-21-1-2-1001",
                                 "S-1-5-21-1-2-3-1001\n", " S-1-5-21-1-2-3-1001", "S-1-5-21-1-2-3-1001;x",
                                 "S-1-5-21-1-2-3-\u0661", "S-1-5-21-1-2-3-12345678901", "S-1-5-80-1-2-3-4-5"])
def test_refused_member_sids(sid: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_member_sid(sid)


def test_group_sids() -> None:
    assert validate_group_sid("s-1-5-32-544") == "S-1-5-32-544"
    assert validate_group_sid("S-1-5-21-1-2-3-1009") == "S-1-5-21-1-2-3-1009"
    for bad in ("Administrators", "S-1-1-0", "S-1-5-11", "S-1-5-32", "S-1-5-32-544-1", "S-1-5-32-544\n", "",
                "S-1-5-32-5x4"):
        with pytest.raises(InvalidNameError):
            validate_group_sid(bad)


@given(st.text(max_size=60))
def test_no_sid_with_anything_but_digits_and_dashes_passes(value: str) -> None:
    for validate in (validate_member_sid, validate_group_sid):
        try:
            out = validate(value)
        except InvalidNameError:
            continue
        assert set(out) <= set("S-0123456789") and out.startswith("S-1-5-")
