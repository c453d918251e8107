"""Hostile member names and SIDs: the adapter refuses what it must, and for names it accepts the simulator's
command log shows the script text never holds the name or the SID and the only state change is that account."""

from __future__ import annotations

import pytest

from shared.winrm import InvalidNameError, MembershipClient, scripts
from tests.integration.winrm_fixtures import ADMINS, WARNING_FILTERS, creds, endpoint, sim
from winrm_sim import SimulatedHost

pytestmark = [pytest.mark.filterwarnings(f) for f in WARNING_FILTERS]
__all__ = ["sim"]

CLIENT = MembershipClient(operation_timeout_sec=5, read_timeout_sec=10, deadline_sec=20)

REFUSED = [
    'a"b', "a\u2018b", "o\u2019brien", "a\u201ab", "a\u201bb", "x\u201cy\u201d", "a;b", "a`b", "$env:X",
    "a\nb", "a\r\nRemove-LocalGroupMember", "a\tb", "a\x00b", "a\u200bb", "a\u00a0b", "a\u202eb", "a|b",
    "a<b", "a>b", "a*b", "a?b", "a=b", "a,b", "a+b", "a[b]", "a/b", "a:b", "a@corp", "CORP\\a\\b", "\\bob",
    "CORP\\", " bob", "bob ", "...", ". .", "x" * 21, "CORP\\" + "y" * 21, "D" * 16 + "\\bob",
    "x'; Add-LocalGroupMember -SID S-1-5-32-544 -Member evil; '", "e\u0301cole",
]
ACCEPTED = [
    "o'brien", "CORP\\o'brien", "a&b", "$x", "$(calc)", "%PATH%", "a (b)", "{x}", "~bob!", "#1^2",
    "CORP\\" + "z" * 20, "J\u00f6rg", "\u0431\u043e\u0431", "CORP\\x&calc.exe", "'",
]


HOSTILE_SIDS = [
    "S-1-5-21-1-2-3-1001'; Add-LocalGroupMember -SID S-1-5-32-544 -Member evil; '", "S-1-5-21-1-2-3-1001\n",
    "S-1-5-21-1-2-3-1001 ", "$env:JIT_MEMBER_SID", "S-1-5-21-1-2-3-1001;calc", "S-1-5-21-1-2-3-x",
    "S-1-5-21-1-2-3-\u0661\u0660\u0660\u0661", "CORP\\bob", "",
]
NOT_ACCOUNTS = ["S-1-1-0", "S-1-5-11", "S-1-5-32-544", "S-1-5-21-1-2-3-512", "S-1-5-21-1-2-3-513"]


@pytest.mark.parametrize("name", REFUSED)
def test_refused_before_anything_is_sent(sim: SimulatedHost, name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        CLIENT.resolve(endpoint(sim), creds("basic"), ADMINS, name)
    assert not info.value.retryable
    with pytest.raises(InvalidNameError):
        CLIENT.list_sessions(endpoint(sim), creds("basic"), name)
    assert sim.command_log == [] and sim.host.changes == []


@pytest.mark.parametrize("sid", HOSTILE_SIDS)
def test_hostile_sids_are_refused_before_anything_is_sent(sim: SimulatedHost, sid: str) -> None:
    for call in (CLIENT.add_member, CLIENT.remove_member, CLIENT.is_member):
        with pytest.raises(InvalidNameError):
            call(endpoint(sim), creds("basic"), ADMINS, sid)
        with pytest.raises(InvalidNameError):  # nor as the group
            call(endpoint(sim), creds("basic"), sid, "S-1-5-21-1-2-3-1001")
    assert sim.command_log == [] and sim.host.changes == []


@pytest.mark.parametrize("sid", NOT_ACCOUNTS)
def test_sids_of_groups_and_well_known_principals_are_never_members_to_change(sim: SimulatedHost, sid: str) -> None:
    for call in (CLIENT.add_member, CLIENT.remove_member):
        with pytest.raises(InvalidNameError, match="member SID refused"):
            call(endpoint(sim), creds("basic"), ADMINS, sid)
    assert sim.command_log == [] and sim.host.changes == []


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_accepted_names_are_data_only(sim: SimulatedHost, transport: str) -> None:
    ep, cr = endpoint(sim, transport), creds(transport)
    for name in ACCEPTED:
        before = len(sim.host.changes)
        log_start = len(sim.command_log)
        resolved = CLIENT.resolve(ep, cr, ADMINS, name)
        canonical = sim.host.canonical(name)
        assert resolved.account_name == canonical and resolved.account_sid == sim.sid_of(name)
        assert CLIENT.add_member(ep, cr, ADMINS, resolved.account_sid) is True
        changes = sim.host.changes[before:]
        assert [(c.op, c.group_sid, c.member, c.member_sid) for c in changes] == [
            ("add", ADMINS, canonical, resolved.account_sid)]
        assert sim.members(ADMINS) == {canonical}
        records = sim.command_log[log_start:]
        assert [r.script_name for r in records] == ["resolve", "add_member"]
        assert records[0].env["JIT_MEMBER"] == name
        assert records[1].env == {"JIT_GROUP_SID": ADMINS, "JIT_MEMBER_SID": resolved.account_sid}
        for record in records:
            parsed = scripts.parse_rendered(record.script or "")
            assert parsed is not None and scripts.render(scripts.ALL_SCRIPTS[parsed[0]], parsed[1]) == record.script
            assert name not in record.arguments and resolved.account_sid not in (record.script or "")
            if len(name) > 1:  # a lone "'" is part of every script's own quoting
                assert name not in (record.script or "")
        assert CLIENT.remove_member(ep, cr, ADMINS, resolved.account_sid) is True
        assert sim.members(ADMINS) == set()
    assert all(c.member == sim.host.canonical(n) for c, n in
               zip(sim.host.changes[::2], ACCEPTED, strict=True))
