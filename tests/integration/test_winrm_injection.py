"""Hostile member names: the adapter refuses what it must, and for names it accepts the simulator's
command log shows the script text never holds the name and the only state change is that literal name."""

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


@pytest.mark.parametrize("name", REFUSED)
def test_refused_before_anything_is_sent(sim: SimulatedHost, name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        CLIENT.add_member(endpoint(sim), creds("basic"), ADMINS, name)
    assert not info.value.retryable
    with pytest.raises(InvalidNameError):
        CLIENT.remove_member(endpoint(sim), creds("basic"), ADMINS, name)
    assert sim.command_log == [] and sim.host.changes == []


@pytest.mark.parametrize("transport", ["basic", "ntlm"])
def test_accepted_names_are_data_only(sim: SimulatedHost, transport: str) -> None:
    ep, cr = endpoint(sim, transport), creds(transport)
    for name in ACCEPTED:
        before = len(sim.host.changes)
        log_start = len(sim.command_log)
        assert CLIENT.add_member(ep, cr, ADMINS, name) is True
        canonical = sim.host.canonical(name)
        changes = sim.host.changes[before:]
        assert [(c.op, c.group_sid, c.member) for c in changes] == [("add", ADMINS, canonical)]
        assert sim.members(ADMINS) == {canonical}
        for record in sim.command_log[log_start:]:
            assert record.script in scripts.ALL_SCRIPTS.values()
            assert record.env["JIT_MEMBER"] == name
            assert name not in record.arguments
            if len(name) > 1:  # a lone "'" is part of every script's own quoting
                assert name not in (record.script or "")
        assert CLIENT.remove_member(ep, cr, ADMINS, name) is True
        assert sim.members(ADMINS) == set()
    assert all(c.member == sim.host.canonical(n) for c, n in
               zip(sim.host.changes[::2], ACCEPTED, strict=True))
